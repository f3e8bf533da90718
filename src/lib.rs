//! archwatch: why a container's entrypoint will not exec on this node, from the files alone.
//!
//! ```text
//! containerd Events.Subscribe ─┐        (subscribe first, then list: no gap)
//! startup/reconnect reconcile ─┴─► watcher ──► pipeline ──► inspect (blocking pool) ──► diagnose
//!                                               │                                         │
//! /proc/sys/fs/binfmt_misc (poll) ──► binfmt ───┘          metrics ◄── Diagnosis ──► journal
//! ```
//!
//! Modules in flow order: [`containerd`] (events, listings, read-only snapshot views) and
//! [`docker`] (Docker Engine's API: events, records, overlay2 layers) feed [`agent`] (tasks
//! and channels) and its pure state machine [`pipeline`]; [`image`] resolves
//! index → manifest → config; [`rootfs`] resolves paths inside a layer stack without ever
//! leaving it; [`inspect`] walks `argv[0]` like the kernel's execve (with [`platform`] and
//! [`binfmt`]); [`variant`] tells which platform's manifest a container runs and [`fix`]
//! chooses the fix that fits the cause (a code from a closed set, and its sentence);
//! [`diagnose`] joins a verdict with an exit into one [`diagnose::Diagnosis`]; [`sinks`]
//! report it. With the `lab` feature (the default; not in the shipped image), [`oci`],
//! [`lab`] and [`demo`] build and run incident images on a private containerd and Docker
//! Engine; [`report`] renders the CLI's human output.
#![forbid(unsafe_code)]

pub mod agent;
pub mod binfmt;
pub mod containerd;
#[cfg(feature = "lab")]
pub mod demo;
pub mod diagnose;
pub mod docker;
pub mod fix;
pub mod image;
pub mod inspect;
#[cfg(feature = "lab")]
pub mod lab;
#[cfg(feature = "lab")]
pub mod oci;
pub mod pipeline;
pub mod platform;
#[cfg(feature = "lab")]
pub mod replay;
pub mod report;
pub mod rootfs;
pub mod sinks;
pub mod source;
pub mod tls;
pub mod tracer;
pub mod variant;
pub mod verify;
