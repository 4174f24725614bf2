//! The file datastore: a multi-document YAML of Calico resources.
