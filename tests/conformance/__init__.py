"""Black-box port of the OCI distribution-spec conformance suite (classic Ginkgo + newer runner)."""
