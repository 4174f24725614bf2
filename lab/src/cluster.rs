//! A lab with the agents of its nodes: what nearly every integration test starts from.
//!
//! [`Cluster::up`] builds the [`Lab`] of a Calico YAML file and copies the file into the lab's
//! directory as the agents' datastore, so that a test may rewrite it; agents are then started per
//! node in the mode a test asks for. Dropping the cluster stops the agents first and then tears the
//! lab down, also when a test fails or panics: the fields drop in that order.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::{Agent, AgentOptions, Lab, LabOptions};

/// How long an agent may take to program its node.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A lab, the agents running in it (by node) and the datastore file they read.
#[derive(Debug)]
pub struct Cluster {
    /// Declared before `lab`, so that the agents stop before the lab is torn down.
    agents: BTreeMap<String, Agent>,
    bin: PathBuf,
    datastore: PathBuf,
    /// The namespaces, pods and processes of the cluster.
    pub lab: Lab,
}

impl Cluster {
    /// Builds the lab of the cluster in `example` (Calico YAML) with `bin` as the agent, and
    /// copies `example` to the lab's directory as the datastore; no agent runs yet.
    pub fn up(example: &Path, bin: &Path) -> anyhow::Result<Cluster> {
        if !bin.exists() {
            bail!("agent binary {} does not exist: build it with `cargo build -p dataplane`", bin.display());
        }
        let model = crate::load_model(example)?;
        let lab = Lab::up(&model, LabOptions::default())?;
        let datastore = lab.dir().join("cluster.yaml");
        std::fs::copy(example, &datastore)
            .with_context(|| format!("copying {} to {}", example.display(), datastore.display()))?;
        Ok(Cluster { agents: BTreeMap::new(), bin: bin.to_owned(), datastore, lab })
    }

    /// The test suite's start: [`Cluster::up`] of `example` (a path under the workspace root) with
    /// the suite's agent binary, or `None` (after saying why) when `test` needs root it lacks.
    pub fn up_or_skip(test: &str, example: &str) -> anyhow::Result<Option<Cluster>> {
        if dataplane_tests::skip_unless_root(test) {
            return Ok(None);
        }
        Cluster::up(&dataplane_tests::workspace_root().join(example), &dataplane_tests::agent_bin()).map(Some)
    }

    /// The agent binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The datastore file the agents read (the lab's copy, which a test may rewrite).
    pub fn datastore(&self) -> &Path {
        &self.datastore
    }

    /// The names of the lab's nodes.
    pub fn node_names(&self) -> Vec<String> {
        self.lab.nodes().map(|node| node.name.clone()).collect()
    }

    /// Starts an agent with `options` on every node, then waits until each is ready: the agents
    /// program their nodes side by side.
    pub fn start_all(&mut self, options: &AgentOptions) -> anyhow::Result<()> {
        for node in self.node_names() {
            self.spawn(&node, options)?;
        }
        for agent in self.agents.values_mut() {
            agent.wait_ready(READY_TIMEOUT)?;
        }
        Ok(())
    }

    /// Starts the agent of `node` with `options` (stopping the one it replaces first, with
    /// SIGTERM) and waits until it has programmed the node; the error holds its log.
    pub fn start(&mut self, node: &str, options: &AgentOptions) -> anyhow::Result<()> {
        let agent = self.spawn(node, options)?;
        let ready = agent.wait_ready(READY_TIMEOUT);
        ready.with_context(|| format!("agent of {node} is not ready:\n{}", agent.log()))
    }

    /// Starts the agent of `node` without waiting, replacing the one it had.
    fn spawn(&mut self, node: &str, options: &AgentOptions) -> anyhow::Result<&mut Agent> {
        if let Some(mut old) = self.agents.remove(node) {
            old.process().terminate(Duration::from_secs(5))?;
        }
        let agent = self.lab.start_agent_with(node, &self.bin, &self.datastore, options)?;
        Ok(self.agents.entry(node.to_owned()).or_insert(agent))
    }

    /// Stops the agent of `node` with SIGTERM (its pins, or the fallback's routes, stay) and
    /// returns it, stopped, for its log; fails if it needed SIGKILL or exited with an error.
    pub fn stop(&mut self, node: &str) -> anyhow::Result<Agent> {
        let mut agent = self.agents.remove(node).with_context(|| format!("no agent runs for {node}"))?;
        agent.stop()?;
        Ok(agent)
    }

    /// The agent of `node`, if one runs.
    pub fn agent(&self, node: &str) -> Option<&Agent> {
        self.agents.get(node)
    }

    /// The agent of `node`, to wait on it or signal it.
    pub fn agent_mut(&mut self, node: &str) -> anyhow::Result<&mut Agent> {
        self.agents.get_mut(node).with_context(|| format!("no agent runs for {node}"))
    }

    /// The running agents, by node.
    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }

    /// The log of `node`'s agent (empty when none runs).
    pub fn log(&self, node: &str) -> String {
        self.agents.get(node).map(Agent::log).unwrap_or_default()
    }

    /// Every agent's log, with where the lab keeps its files, to explain a failure.
    pub fn logs(&self) -> String {
        let mut text = format!("lab {} (logs in {}); agent logs:", self.lab.prefix(), self.lab.dir().display());
        for agent in self.agents.values() {
            text.push_str(&format!("\n--- agent of {} ---\n{}", agent.node(), agent.log().trim_end()));
        }
        text
    }

    /// Runs `argv` in `node`'s namespace; it must succeed. Returns its stdout.
    pub fn on(&self, node: &str, argv: &[&str]) -> anyhow::Result<String> {
        self.lab.exec_stdout(self.lab.node_netns(node)?, argv)
    }
}
