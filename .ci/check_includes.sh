#!/usr/bin/env bash
# The dependency rule of csrc/ (docs/architecture.md): every directory
# depends on common/, and nothing depends on the backends.
#
#   common/  includes only common/
#   api/     includes api/ and common/        (never cpu/ or cuda/)
#   cpu/     includes cpu/, common/, api/core/ (the backend glue)
#   cuda/    includes cuda/, common/, api/core/ (never cpu/); its kernels
#            (.cu, .cuh) only cuda/ and common/
#   csrc/ops.cpp, the schemas, includes api/core/ only
#   include/ (the public C++ header) includes nothing of ours; cpp_api/,
#            its implementation, only that header (it calls the ops through
#            the dispatcher, never the code behind them)
#
# and the kernels (.cu, .cuh) include no torch header (torch/, ATen/, c10/).
# Prints each include that breaks the rule, as file:line: include, and exits
# 1 if there is any.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

allowed_for() {
  case "$1" in
    csrc/common/*) echo "common/" ;;
    csrc/api/*) echo "api/ common/" ;;
    csrc/cpu/*) echo "cpu/ common/ api/core/" ;;
    csrc/cuda/*.cu | csrc/cuda/*.cuh) echo "cuda/ common/" ;;
    csrc/cuda/*) echo "cuda/ common/ api/core/" ;;
    csrc/include/*) echo "" ;;
    csrc/cpp_api/*) echo "torch_selfattn/" ;;
    csrc/*) echo "api/core/" ;;
  esac
}

violations=0
while IFS= read -r file; do
  allowed=$(allowed_for "$file")
  while IFS=: read -r line include; do
    [[ -z "$line" ]] && continue
    ok=0
    for prefix in $allowed; do
      [[ "$include" == "$prefix"* ]] && ok=1
    done
    if [[ $ok -eq 0 ]]; then
      echo "$file:$line: #include \"$include\" breaks the rule (allowed: $allowed)"
      violations=$((violations + 1))
    fi
  done < <(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$file" |
           sed 's/^\([0-9]*\):[^"]*"\([^"]*\)".*/\1:\2/' || true)
  if [[ "$file" == *.cu || "$file" == *.cuh ]]; then
    while IFS= read -r hit; do
      [[ -z "$hit" ]] && continue
      echo "$file:${hit%%:*}: a kernel includes a torch header: ${hit#*:}"
      violations=$((violations + 1))
    done < <(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"](torch|ATen|c10)/' "$file" || true)
  fi
done < <(find csrc -type f \( -name '*.h' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu' \) | sort)

if [[ $violations -gt 0 ]]; then
  echo "check_includes: $violations include(s) break the dependency rule" >&2
  exit 1
fi
echo "check_includes: every include in csrc/ follows the dependency rule"
