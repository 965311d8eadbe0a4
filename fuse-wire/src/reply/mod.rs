//! Reply encoders.
