//! One module per console page (or group of pages), each with its read queries and actions.

pub mod audit;
pub mod cycles;
pub mod jobs;
pub mod overview;
pub mod payments;
pub mod queues;
pub mod transfers;
