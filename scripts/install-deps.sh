#!/usr/bin/env bash
# Installs what building and testing Strata needs on Debian 12, if missing.
#   scripts/install-deps.sh [EXTRA_DEBIAN_PACKAGE...]
# Needs root (or sudo) only when something must be installed.
set -euo pipefail

packages=(build-essential clang libclang-dev pkg-config "$@")
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "Strata needs the Rust toolchain (cargo, rustc); install it with rustup: https://rustup.rs" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component" >/dev/null 2>&1 || echo "note: could not add $component" >&2
    fi
done
