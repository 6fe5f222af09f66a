# tracecap shell hook for bash >= 5.0, printed by `tracecap shell-init bash`.
# Use: eval "$(tracecap shell-init bash)" at the end of ~/.bashrc.
# Per command it runs builtins only (no process, no subshell, no network) and appends one start and
# one end record to a spool file the tracecap daemon follows; the record format is specified at the
# top of agent/sources/shell.py. It never prints, keeps $? and $_, and does nothing when the spool
# directory is missing.
if [[ -n "${BASH_VERSION:-}" && -z "${__tracecap_loaded:-}" && $- == *i* && -n "${EPOCHREALTIME:-}" ]]; then
__tracecap_loaded=1
__tc_dir=@SPOOL@
__tc_ignore_space=@IGNORE_SPACE@
__tc_junit=@PYTEST_JUNIT@
__tc_segmax=@SEGMENT_BYTES@
__tc_keep=@SEGMENTS@
__tc_sid="$$-${EPOCHREALTIME//[.,]/}"
__tc_scratch="$__tc_dir/$__tc_sid.cmd"
__tc_n=0 __tc_seg=0 __tc_bytes=0 __tc_dropped=0 __tc_armed=0 __tc_open=0 __tc_hist=-1 __tc_lastarg= __tc_t0=
__tc_cnt=(0)
__tc_pyo_on=0 __tc_pyo_had= __tc_pyo_old= __tc_pyo_ours=

__tc_esc() {  # $1 -> __tc_e, one line: \ \n \t \r escaped
    local s=${1//\\/\\\\}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    __tc_e=${s//$'\r'/\\r}
}

__tc_put() {  # append record $1 to the current segment, rotating when it is full
    if (( __tc_bytes > 0 && __tc_bytes + ${#1} >= __tc_segmax )); then
        (( __tc_seg += 1, __tc_bytes = 0 ))
        local old=$(( __tc_seg - __tc_keep ))
        # The segment written __tc_keep rotations ago is still there: the daemon has not taken it,
        # so the spool is full. Drop it (truncate; rm would be a process) and record the running
        # total of dropped records, so a later D1 still tells if this one is dropped too.
        if (( old >= 0 )) && [[ -s "$__tc_dir/$__tc_sid.$old.rec" ]]; then
            { : >| "$__tc_dir/$__tc_sid.$old.rec"; } 2>/dev/null
            (( __tc_dropped += ${__tc_cnt[old % __tc_keep]:-0} ))
            local d="D1	b	$__tc_sid	$__tc_dropped"
            { builtin printf '%s\n' "$d" >> "$__tc_dir/$__tc_sid.$__tc_seg.rec"; } 2>/dev/null
            (( __tc_bytes += ${#d} + 1 ))
        fi
        (( __tc_cnt[__tc_seg % __tc_keep] = 0 ))
    fi
    { builtin printf '%s\n' "$1" >> "$__tc_dir/$__tc_sid.$__tc_seg.rec"; } 2>/dev/null \
        && (( __tc_bytes += ${#1} + 1, __tc_cnt[__tc_seg % __tc_keep] += 1 ))
}

__tc_histline() {  # the newest history line -> __tc_line; fails when history did not advance
    local HISTTIMEFORMAT= line=
    { builtin history 1 >| "$__tc_scratch"; } 2>/dev/null
    { IFS= builtin read -r -d '' line < "$__tc_scratch"; } 2>/dev/null
    line=${line%$'\n'}
    [[ $line =~ ^\ *([0-9]+)[\*\ ]\ (.*)$ && ${BASH_REMATCH[1]} != "$__tc_hist" ]] || return 1
    __tc_hist=${BASH_REMATCH[1]}
    __tc_line=${BASH_REMATCH[2]}
}

__tc_start() {  # $1 start time, $2 command text
    (( __tc_n += 1 ))
    __tc_esc "$2"
    local c=$__tc_e
    __tc_esc "$PWD"
    __tc_put "S1	b	$__tc_sid	$__tc_n	$1	$$	1	bash	$__tc_e	$c"
    __tc_open=1
}

__tc_preexec() {  # DEBUG trap; $1 is $_ as bash had it
    if [[ $__tc_armed != 1 || $BASH_COMMAND == __tc_precmd* || -n "${COMP_LINE:-}" ]]; then
        : "$1"
        return
    fi
    __tc_armed=0
    local t=$EPOCHREALTIME
    if [[ ! -d $__tc_dir ]]; then : "$__tc_lastarg"; return; fi
    local cmd
    if __tc_histline; then
        cmd=$__tc_line
    elif [[ $__tc_ignore_space == 1 && $HISTCONTROL == *@(ignorespace|ignoreboth)* ]]; then
        # Not added to history: a space-prefixed command (skip it) or a repeated one; bash does
        # not say which, so privacy wins.
        : "$__tc_lastarg"
        return
    else
        cmd=$BASH_COMMAND
    fi
    if [[ $__tc_ignore_space == 1 && $cmd == [\ ]* ]]; then : "$__tc_lastarg"; return; fi
    __tc_start "$t" "$cmd"
    if [[ $__tc_junit == 1 && $cmd == *@(test|tox|nox|check)* ]]; then
        __tc_pyo_on=1 __tc_pyo_had=${PYTEST_ADDOPTS+1} __tc_pyo_old=${PYTEST_ADDOPTS-}
        __tc_pyo_ours="'--junitxml=$__tc_dir/$__tc_sid.$__tc_n.junit.xml'"
        export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:+$PYTEST_ADDOPTS }$__tc_pyo_ours"
    fi
    : "$__tc_lastarg"
}

__tc_precmd() {  # first in PROMPT_COMMAND; $1 is $_ of the user's command
    local s=$? t=$EPOCHREALTIME
    __tc_lastarg=$1
    if [[ $__tc_armed == 1 && -d $__tc_dir ]] && __tc_histline; then
        # A line bash ran without a DEBUG trap in this shell, such as `(exit 3)` (subshells do
        # not inherit the trap): its start is only known now.
        [[ $__tc_ignore_space == 1 && $__tc_line == [\ ]* ]] || __tc_start "$t" "$__tc_line"
    fi
    if (( __tc_open )); then
        __tc_open=0
        __tc_put "E1	b	$__tc_sid	$__tc_n	$t	$s	"
        if (( __tc_pyo_on )); then
            __tc_pyo_on=0
            if [[ ${PYTEST_ADDOPTS-} == "${__tc_pyo_old:+$__tc_pyo_old }$__tc_pyo_ours" ]]; then
                if [[ -n $__tc_pyo_had ]]; then PYTEST_ADDOPTS=$__tc_pyo_old; else unset PYTEST_ADDOPTS; fi
            else  # the command changed PYTEST_ADDOPTS itself: keep its value, minus our option
                PYTEST_ADDOPTS=${PYTEST_ADDOPTS/ $__tc_pyo_ours/}
                PYTEST_ADDOPTS=${PYTEST_ADDOPTS/$__tc_pyo_ours/}
            fi
        fi
    fi
    return $s
}

__tc_arm() {  # last in PROMPT_COMMAND: the next DEBUG trap is the user's next command
    local s=$?
    __tc_armed=1
    return $s
}

if [[ -n "${bash_preexec_imported:-}${__bp_imported:-}" ]]; then
    # bash-preexec owns the DEBUG trap and PROMPT_COMMAND; join its arrays instead.
    __tc_bp_preexec() { __tc_armed=1; __tc_preexec "$_"; }
    __tc_bp_precmd() { __tc_precmd "$_"; }
    precmd_functions=(__tc_bp_precmd "${precmd_functions[@]}")
    preexec_functions+=(__tc_bp_preexec)
else
    __tc_prev_trap=$(trap -p DEBUG)
    __tc_prev_trap=${__tc_prev_trap#trap -- \'}
    __tc_prev_trap=${__tc_prev_trap%\' DEBUG}
    __tc_prev_trap=${__tc_prev_trap//\'\\\'\'/\'}
    if [[ -n $__tc_prev_trap ]]; then
        trap -- "__tc_preexec \"\$_\"; $__tc_prev_trap" DEBUG
    else
        trap -- '__tc_preexec "$_"' DEBUG
    fi
    unset __tc_prev_trap
    if [[ ${PROMPT_COMMAND@a} == *a* ]]; then
        PROMPT_COMMAND=('__tc_precmd "$_"' "${PROMPT_COMMAND[@]}" __tc_arm)
    else
        PROMPT_COMMAND="__tc_precmd \"\$_\"${PROMPT_COMMAND:+
$PROMPT_COMMAND}
__tc_arm"
    fi
fi
fi
