//! The reference core (issue 4).

fn main() {}
