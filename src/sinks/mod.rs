//! Where diagnoses go: metrics, the JSONL journal (and, next, Kubernetes Events and the gRPC
//! stream). All are fed from the same `Diagnosis` value.

pub mod api;
pub mod http;
pub mod journal;
pub mod kube_events;
pub mod metrics;
