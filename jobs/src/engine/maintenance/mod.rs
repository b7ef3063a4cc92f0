//! Maintenance services that run beside the workers: the rescuer on every replica, the
//! pruner on the one replica that holds the maintenance lease row.

pub mod leader;
pub mod prune;
pub mod rescue;

pub use leader::{
    Leadership, Maintainer, MaintainerConfig, DEFAULT_LEADERSHIP_LEASE, DEFAULT_LEADERSHIP_RETRY,
    MAINTENANCE_DUTY,
};
pub use prune::{
    PruneReport, Pruner, PrunerConfig, DEFAULT_PRUNE_BATCH, DEFAULT_PRUNE_INTERVAL,
    DEFAULT_RETENTION,
};
pub use rescue::{RescueReport, Rescuer, RescuerConfig, DEFAULT_RESCUE_INTERVAL};
