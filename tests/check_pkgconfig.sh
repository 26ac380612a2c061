#!/bin/sh
# A program builds and runs against libmop through pkg-config, both from the
# build tree (uninstalled .pc) and from an installation (DESTDIR), shared and static.
# Usage: check_pkgconfig.sh BUILD_DIR
set -eu
build=$(cd "$1" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/prog.c" <<'C'
#include <libmop/mop.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    mop_model *m = NULL;
    mop_status s = mop_model_load("/nonexistent.gguf", NULL, &m);
    printf("%s %s\n", mop_version(), mop_status_name(s));
    return mop_version_number() == MOP_VERSION_NUMBER && s == MOP_E_IO ? 0 : 1;
}
C
echo "uninstalled:"
PKG_CONFIG_PATH="$build/meson-uninstalled" cc -o "$tmp/u" "$tmp/prog.c" \
  $(PKG_CONFIG_PATH="$build/meson-uninstalled" pkg-config --cflags --libs libmop)
LD_LIBRARY_PATH="$build" "$tmp/u"

echo "installed:"
meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >/dev/null
pc=$(dirname "$(find "$tmp/root" -name libmop.pc | head -1)")
export PKG_CONFIG_SYSROOT_DIR="$tmp/root" PKG_CONFIG_PATH="$pc"
cc -o "$tmp/i" "$tmp/prog.c" $(pkg-config --cflags --libs libmop)
LD_LIBRARY_PATH=$(dirname "$(find "$tmp/root" -name 'libmop.so.0' | head -1)") "$tmp/i"

echo "installed, static:"
cc -static-libgcc -o "$tmp/s" "$tmp/prog.c" $(pkg-config --cflags libmop) \
  "$(find "$tmp/root" -name libmop.a | head -1)" $(pkg-config --libs-only-l --static libmop | sed 's/-lmop//')
"$tmp/s"
