"""A job's output directory as a protocol: exactly-once commits, the output lease, the resume identity."""
