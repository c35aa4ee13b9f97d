#!/usr/bin/env bash
# check_symbols.sh LIB.so: the shared library exports only embstore's own
# symbols (cmake/embstore.map): functions and data in namespace embstore,
# and the typeinfo, vtables and guard variables of its classes. Nothing of
# TBB, RocksDB, Boost, nlohmann_json, CUDA or the standard library.
set -euo pipefail
lib=$1
all=$(nm -D --defined-only "$lib" | awk '{print $NF}' | sed 's/@.*//')
count=$(echo "$all" | grep -c . || true)
[ "$count" -ge 100 ] || { echo "check_symbols: only $count exported symbols in $lib" >&2; exit 1; }
# The version node (EMBSTORE_0) and mangled names of namespace embstore
# (_ZN8embstore..., _ZNK8embstore..., _ZTIN8embstore... and so on). A
# mangled name begins with the entity's own qualified name, so this is exact
# (demangled, a function template begins with its return type).
others=$(echo "$all" | grep -vE '^EMBSTORE_[0-9]+$' |
         grep -vE '^_Z(N|TIN|TSN|TVN|TTN|GVN|ZN|GVZN|Thn[0-9]+_N)K?8embstore' || true)
if [ -n "$others" ]; then
  echo "check_symbols: $lib exports symbols outside embstore::" >&2
  echo "$others" | head -n 20 | c++filt >&2
  exit 1
fi
echo "   $lib: $count exported symbols, every one embstore's own"
