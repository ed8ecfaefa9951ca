"""HTTP handlers, thin: parse and validate, call processing or the repositories, answer in the envelope."""
