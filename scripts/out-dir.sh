# Sourced by the scripts that remove their output folder whole and write it again
# (scripts/demo, scripts/screenshots). `OUT` is a common name that a shell may export
# for something else: the folder is only taken when it is missing, empty, or marked by
# an earlier run of the same script.
#
#   claim_out SCRIPT DIR   exits 2, saying why, unless DIR may be removed
#   mark_out SCRIPT DIR    marks DIR (after it was made) as SCRIPT's output

claim_out() {
    local script="$1" dir="$2" held
    [ -e "$dir" ] || return 0
    if [ ! -d "$dir" ]; then
        echo "$script: OUT=$dir is not a folder; it would be removed: choose a folder" >&2
        exit 2
    fi
    held=$(ls -A "$dir") # fails the script on a folder it cannot read
    if [ ! -e "$dir/.expo-$script-output" ] && [ -n "$held" ]; then
        echo "$script: OUT=$dir holds files and is not the output of an earlier" \
            "scripts/$script; it would be removed whole: choose an empty or new folder" >&2
        exit 2
    fi
}

mark_out() {
    touch "$2/.expo-$1-output"
}
