//! archwatch
pub mod binfmt;
pub mod platform;
pub mod rootfs;
