//! The use cases: what the API, the `ekko` command line and the daemons
//! ask Ekko to do. Each takes the [`Ekko`](crate::Ekko) and, where a caller
//! is checked, its [`Caller`](crate::policy::Caller); none knows HTTP.

pub mod convert;
