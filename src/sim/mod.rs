//! Simulated Azure (placeholder during bring-up).
