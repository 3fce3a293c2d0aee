//! Local durable state, written once for the agent's spool and the collector's ledger.
//!
//! Both keep their state in a sled 0.34 database beside a small guard file, and both need the
//! same four mechanisms. Each lives here once, so that the spool and the ledger cannot drift
//! apart on what "durable" or "damaged" means:
//!
//! - [`open()`]: opening a database, with sled's failures classified by kind (another process
//!   holds its lock, the directory is unusable, the files are damaged) and sled's panics on
//!   some damaged pages turned into errors ([`catch_panic`]).
//! - [`Flusher`]: **the durability rule.** After a failed fsync the kernel may have dropped
//!   the dirty pages it could not write, so a later fsync can succeed without them. A flush
//!   that failed therefore poisons every later one until the process restarts: nothing
//!   written before or after it is reported durable again.
//! - [`GuardFile`]: a truncation guard. sled opens a truncated or partly overwritten log as
//!   whatever prefix it can read, silently; a guard file remembers how far the durable state
//!   had got, written only after a flush that succeeded under the rule, so it is never ahead
//!   of the disk.
//! - [`write_atomic`]: writing a small file so that a crash leaves the old or the new
//!   contents, never a torn mix, and the new contents are durable when it returns.

mod atomic;
mod flush;
mod guard;
mod open;

pub use atomic::{Access, write_atomic};
pub use flush::{FlushError, Flusher};
pub use guard::GuardFile;
pub use open::{Damage, OpenError, Panicked, catch_panic, open};
