//! The request layer: what the filter reads from a request and what it does to it, with no
//! cache, shared data or store in sight.

pub mod act;
pub mod admission;
pub mod fields;
pub mod key;
pub mod key_ids;
pub mod path;
pub mod rules;
