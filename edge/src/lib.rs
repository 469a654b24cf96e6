//! Statiko edge: follows the desired state, stages app bundles and serves every site over HTTPS.

pub mod bundle;
pub mod desired;
pub mod sync;
pub mod table;
