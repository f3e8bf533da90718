//! archwatch
pub mod agent;
pub mod binfmt;
pub mod containerd;
pub mod demo;
pub mod diagnose;
pub mod image;
pub mod inspect;
pub mod lab;
pub mod oci;
pub mod pipeline;
pub mod platform;
pub mod report;
pub mod rootfs;
pub mod sinks;
