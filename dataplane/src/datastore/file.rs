//! The file datastore: a multi-document YAML of Calico resources.
//!
//! The documents are read here and decoded by the shared resource decoder
//! ([`super::resources::ModelBuilder`]); a resource with a missing or invalid field is reported
//! as a [`Problem`] and skipped while the rest is applied. Only text that is not YAML at all makes
//! the whole file unusable ([`FileError`]). The watcher that re-reads the file is
//! [`super::file_watch`].

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize as _;
use serde_yaml::Value;

use super::resources::ModelBuilder;
use crate::model::{Model, Problem};

/// The file as a whole is unusable (not YAML): the agent keeps its last good state.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The text is not a YAML stream. serde_yaml's message already names the line and column.
    #[error("not YAML: {message}")]
    NotYaml {
        /// The line (1-based) where the YAML parser gave up, where known.
        line: Option<usize>,
        /// The column (1-based) where the YAML parser gave up, where known.
        column: Option<usize>,
        /// What the YAML parser says is wrong.
        message: String,
    },
}

impl From<serde_yaml::Error> for FileError {
    fn from(error: serde_yaml::Error) -> Self {
        let location = error.location();
        FileError::NotYaml {
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            message: error.to_string(),
        }
    }
}

/// Reads a multi-document YAML stream of Calico resources into a model.
///
/// Resources that cannot be used are returned as problems beside the model; only a stream that is
/// not YAML at all is an error.
pub fn parse(text: &str) -> Result<(Model, Vec<Problem>), FileError> {
    // Read every document before applying any: a syntax error anywhere means the file is probably
    // being edited, and half of it must not replace the last good state.
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        documents.push(Value::deserialize(document)?);
    }
    let mut builder = ModelBuilder::new();
    for (index, document) in documents.iter().enumerate() {
        builder.add(document, &format!("document {}", index + 1));
    }
    Ok(builder.finish())
}

/// Reads the file at `path` and parses it with [`parse`]; errors name the path.
pub fn load(path: &Path) -> Result<(Model, Vec<Problem>), anyhow::Error> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the datastore file {}", path.display()))?;
    let parsed = parse(&text).with_context(|| format!("cannot use the datastore file {}", path.display()))?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::resources::tests::SEED_IPPOOL;

    fn parse_ok(text: &str) -> (Model, Vec<Problem>) {
        parse(text).expect("test input is YAML")
    }

    #[test]
    fn empty_stream_is_an_empty_model() {
        for text in ["", "---\n", "# only a comment\n", "---\n---\n...\n"] {
            assert_eq!(parse_ok(text), (Model::default(), vec![]), "{text:?}");
        }
    }

    #[test]
    fn not_yaml_is_an_error_with_a_line() {
        let text = "kind: IPPool\nmetadata: {name: p}\n---\nkind: IPPool\nspec: [unclosed\n";
        match parse(text) {
            Err(FileError::NotYaml { line, message, .. }) => {
                assert!(line.is_some(), "{message}");
                assert!(message.contains("line"), "{message}");
            }
            Ok(parsed) => panic!("parsed broken YAML: {parsed:?}"),
        }
        assert!(parse("a: 1\na: 2\n").is_err(), "duplicate keys are not a valid mapping");
        assert!(parse("\t- {").is_err());
    }

    #[test]
    fn hostile_input_does_not_panic() {
        let inputs = [
            "kind: [1, 2]",
            "kind: IPPool\nmetadata: [x]\nspec: 5",
            "kind: IPPool\nmetadata: {name: 5}\nspec: {cidr: 10.0.0.0/8, blockSize: -1}",
            "kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, blockSize: 26.5}",
            "kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, blockSize: 99999999999999999999}",
            "kind: List\nitems: {a: b}",
            "kind: List\nitems: [[[[]]]]",
            "kind: IPPoolList\nitems: [null, {metadata: {name: x}}]",
            "kind: Node\napiVersion: v1\nmetadata: {name: k, annotations: [a]}",
            "kind: Node\nmetadata: {name: k}\nspec: {addresses: [1, {type: CalicoNodeIP}, {type: CalicoNodeIP, address: bad}]}",
            "kind: WorkloadEndpoint\nmetadata: {name: w}\nspec: {node: n, ipNetworks: [null, 1]}",
            "kind: !Tagged IPPool\n",
            "kind: IPAMBlock\nspec: {cidr: 10.0.0.0/26, affinity: 7}",
            "&a [*a]",
            "kind: BlockAffinity\nspec: {cidr: 10.0.0.0/26, node: [n]}",
        ];
        for input in inputs {
            // Either outcome is fine; neither may panic.
            let _ = parse(input);
        }
        // Deep nesting and an alias bomb: serde_yaml's limits turn both into errors.
        let deep = format!("kind: List\nitems: {}{}", "[".repeat(1000), "]".repeat(1000));
        assert!(parse(&deep).is_err());
        let mut bomb = String::from("a: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let previous = level - 1;
            bomb.push_str(&format!("b{level}: &a{level} [*a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}]\n"));
        }
        assert!(parse(&bomb).is_err());
    }

    #[test]
    fn load_names_the_path() {
        let missing = Path::new("/nonexistent/dataplane-test/cluster.yaml");
        let error = load(missing).expect_err("the file does not exist");
        assert!(format!("{error:#}").contains("/nonexistent/dataplane-test/cluster.yaml"), "{error:#}");

        let dir = std::env::temp_dir().join(format!("dataplane-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let broken = dir.join("broken.yaml");
        std::fs::write(&broken, "kind: [").expect("write");
        let error = load(&broken).expect_err("not YAML");
        let text = format!("{error:#}");
        assert!(text.contains("broken.yaml") && text.contains("not YAML"), "{text}");
        assert!(error.downcast_ref::<FileError>().is_some());
        let good = dir.join("good.yaml");
        std::fs::write(&good, SEED_IPPOOL).expect("write");
        let (model, problems) = load(&good).expect("loads");
        assert_eq!((model.pools.len(), problems.len()), (1, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
