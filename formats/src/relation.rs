//! Relation maps on the CPU, exactly as `TINYMIM.md` defines them.
//!
//! `R_QK = softmax(q·kᵀ·d^-½)`, `R_VV = softmax(v·vᵀ·d^-½)` over keys, per head.
