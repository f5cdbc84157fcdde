# Sourced by the repository's shell scripts and the Makefile, so that these
# are written once. POSIX sh: make's $(shell) sources it too.
#
#   ZL_REGISTRY     the local cluster's registry as its real node reaches it
#                   (tests/cluster/realnode.go registryAddr; tests/common's
#                   LOCAL_REGISTRY, which tests/image_layout.rs holds equal)
#   zl_app_version  prints the chart's appVersion, the release's version;
#                   $1 is the repository root (default: .)

ZL_REGISTRY=198.19.128.1:5000

zl_app_version() {
  awk -F'"' '/^appVersion:/ {print $2}' "${1:-.}/charts/zen-lead/Chart.yaml"
}
