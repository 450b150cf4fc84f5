mod export;

fn main() {}
