#!/usr/bin/env bash
# Integration: every subcommand's --help and its man page document the same long options, and
# every subcommand has a man page and is listed in man/blkmig.1 and README.md.
#
# What counts as documented:
# - in `blkmig CMD --help`: an option that starts a line of the option list
#   ("  --name ARG  text" or "  -x, --name ARG  text"), not one named in the synopsis or prose;
# - in man/blkmig-CMD.1: an option in the tag of an item (the line after .TP or .TQ, or an .IP
#   line) of the OPTIONS section and its subsections, not one named in the running text.
. "$(dirname "$0")/../lib.sh"

[ -x "$BLKMIG" ] || fail "no blkmig binary at $BLKMIG"
MAN=$top_srcdir/man
README=$top_srcdir/README.md

FAILS=0
bad() {
    echo "FAIL: $TEST_NAME: $*" >&2
    FAILS=$((FAILS + 1))
}

# help_opts CMD: the long options that start a line of `blkmig CMD --help`, sorted, one a line.
help_opts() {
    "$BLKMIG" "$1" --help >"$TMP/help.txt" 2>&1 || {
        bad "blkmig $1 --help exited $?"
        return 0
    }
    sed -n -E 's/^[[:space:]]+(-[A-Za-z0-9],[[:space:]]*)?(--[a-z0-9][a-z0-9-]*)(,[[:space:]]*(--[a-z0-9][a-z0-9-]*))?.*/\2 \4/p' \
        "$TMP/help.txt" | tr ' ' '\n' | sed '/^$/d' | sort -u
}

# man_unescape FILE: the man source with \- and \(hy as '-' and \& \% \fX removed.
man_unescape() {
    sed -E -e 's/\\-/-/g' -e 's/\\\(hy/-/g' -e 's/\\[&%]//g' -e 's/\\f[BIRP]//g' \
        -e 's/\\f\(..//g' "$1"
}

# man_opts FILE: the long options in the item tags of FILE's OPTIONS section, sorted.
man_opts() {
    man_unescape "$1" | awk '
        /^\.SH/ { in_opts = ($0 ~ /^\.SH +"?OPTIONS"?[[:space:]]*$/); tag = 0; next }
        !in_opts { next }
        /^\.(TP|TQ)/ { tag = 1; next }
        /^\.IP/ { print; next }
        tag && /^\.[A-Z]/ && !/^\.(B|I|R|BI|BR|IB|IR|RB|RI)( |$)/ { tag = 0; next }
        tag { print; tag = 0 }
    ' | grep -o -E -- '--[a-z0-9][a-z0-9-]*' | sort -u || true
}

# The subcommands, from the "Commands:" list of `blkmig --help`.
"$BLKMIG" --help >"$TMP/main-help.txt" || fail "blkmig --help exited $?"
mapfile -t CMDS < <(sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z0-9-]*\) .*/\1/p' \
    "$TMP/main-help.txt")
[ "${#CMDS[@]}" -ge 8 ] || fail "found ${#CMDS[@]} commands in blkmig --help, expected 8 or more"
log "commands: ${CMDS[*]}"

man_unescape "$MAN/blkmig.1" >"$TMP/blkmig.1.txt"
for cmd in "${CMDS[@]}"; do
    page=$MAN/blkmig-$cmd.1
    if [ ! -f "$page" ]; then
        bad "$cmd: no man page man/blkmig-$cmd.1"
    else
        help_opts "$cmd" >"$TMP/help.opts"
        man_opts "$page" >"$TMP/man.opts"
        [ -s "$TMP/help.opts" ] || bad "$cmd: no option found in blkmig $cmd --help"
        [ -s "$TMP/man.opts" ] || bad "$cmd: no option found in man/blkmig-$cmd.1 OPTIONS"
        while read -r opt; do
            bad "$cmd: $opt is in 'blkmig $cmd --help' but not in man/blkmig-$cmd.1 OPTIONS"
        done < <(comm -23 "$TMP/help.opts" "$TMP/man.opts")
        while read -r opt; do
            bad "$cmd: $opt is in man/blkmig-$cmd.1 OPTIONS but not in 'blkmig $cmd --help'"
        done < <(comm -13 "$TMP/help.opts" "$TMP/man.opts")
    fi
    # man/blkmig.1: an item of COMMANDS tagged with the command, and the page in SEE ALSO.
    awk -v c="$cmd" '/^\.SH/ { s = ($0 ~ /COMMANDS/); next }
                     s && prev ~ /^\.TP/ && $0 == ".B " c { found = 1 } { prev = $0 }
                     END { exit !found }' "$TMP/blkmig.1.txt" ||
        bad "$cmd: not an item of COMMANDS in man/blkmig.1"
    grep -q -F -- ".BR blkmig-$cmd (1)" "$TMP/blkmig.1.txt" ||
        bad "$cmd: blkmig-$cmd(1) not referred to in man/blkmig.1"
    grep -q -E -- "blkmig $cmd([^a-z0-9-]|\$)" "$README" ||
        bad "$cmd: 'blkmig $cmd' does not appear in README.md"
done

# The extraction itself: a known option must be found on both sides, or the test proves nothing.
help_opts mirror | grep -q -x -- '--on-ready' || bad "help extraction missed mirror --on-ready"
man_opts "$MAN/blkmig-mirror.1" | grep -q -x -- '--on-ready' ||
    bad "man extraction missed mirror --on-ready"

[ "$FAILS" -eq 0 ] || fail "$FAILS mismatches between --help, the man pages and README.md"
log "ok: ${#CMDS[@]} commands, --help and man pages agree"
