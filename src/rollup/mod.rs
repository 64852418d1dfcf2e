//! The engine: a day's raw events in, its rollup rows out.
//!
//! [`DayAggregate`] takes events from any source (it is an
//! [`EventSink`](crate::model::EventSink)), is pure and mergeable (events pushed in
//! any order, split across any number of aggregates and merged, give what one pass
//! gives), and past its memory limit spills to files that the jobs provide
//! ([`SpillSpace`]). Inside: the aggregate (`aggregate.rs`), the metadata summary
//! (`summary.rs`), the day's hours beside it (`hours.rs`), the reading of `meta` (`meta.rs`, with the fast scan of the usual
//! flat object in `flat_json.rs`), what a spilled table passes on (`pass_on.rs`), and
//! the spill (`spill/`: its port, its record codec, its partition files, where the
//! threads and the release of freed memory live).
//!
//! It imports only [`model`](crate::model).

mod aggregate;
mod dense_hours;
mod flat_json;
mod hours;
mod memory;
mod meta;
mod meta_value;
mod pass_on;
mod spill;
mod summary;

pub use self::aggregate::{DayAggregate, DayRollup};
pub use self::hours::DayAndHourRollup;
pub use self::meta::MAX_DEPTH;
pub use self::spill::{MemoryLimit, Scratch, SpillError, SpillSpace};
