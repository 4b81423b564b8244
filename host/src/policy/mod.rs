//! Pure request-policy logic, shared by the pipeline phases and fuzzed on its own:
//! path canonicalisation (D7), glob matching (§3.1), route classification (§3.3, D8).

pub mod glob;
pub mod path;
pub mod route;
