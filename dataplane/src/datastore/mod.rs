//! Datastores turn outside formats (Calico YAML, Kubernetes objects, etcd keys) into the model.

pub mod file;
