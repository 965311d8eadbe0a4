//! Notification encoders and the daemon-to-kernel parser.
