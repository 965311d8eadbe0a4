//! Requests: parsing kernel bytes into typed, borrowed views, and encoding them.
