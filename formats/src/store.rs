//! The content-addressed relation store, `relations.zarr` (Zarr v3, written with zarrs).
