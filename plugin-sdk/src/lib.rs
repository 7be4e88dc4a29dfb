//! beeswax plugin SDK.
