"""The benchmark suite behind scripts/bench: rbuild against docker build
(BuildKit) and buildah, on the workloads under benches/."""
