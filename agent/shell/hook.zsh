# tracecap shell hook for zsh >= 5.1, printed by `tracecap shell-init zsh`.
# Use: eval "$(tracecap shell-init zsh)" in ~/.zshrc (after oh-my-zsh or starship is fine).
# Per command it runs builtins only (no process, no subshell, no network) and appends one start and
# one end record to a spool file the tracecap daemon follows; the record format is specified at the
# top of agent/sources/shell.py. It never prints, keeps $? and $_, and does nothing when the spool
# directory is missing.
if [[ -n ${ZSH_VERSION-} && -z ${__tracecap_loaded-} ]] && zmodload zsh/datetime 2>/dev/null; then
typeset -g __tracecap_loaded=1
typeset -g __tc_dir=@SPOOL@
typeset -g __tc_ignore_space=@IGNORE_SPACE@
typeset -g __tc_junit=@PYTEST_JUNIT@
typeset -gi __tc_segmax=@SEGMENT_BYTES@
typeset -gi __tc_keep=@SEGMENTS@
typeset -g __tc_sid="$$-${EPOCHREALTIME//./}"
typeset -gi __tc_n=0 __tc_seg=0 __tc_bytes=0 __tc_open=0 __tc_dropped=0
typeset -g __tc_inter=0
[[ -o interactive ]] && __tc_inter=1
typeset -ga __tc_cnt
__tc_cnt=(0 0 0 0 0 0 0 0)
typeset -g __tc_e= __tc_pyo_had= __tc_pyo_old= __tc_pyo_ours=
typeset -gi __tc_pyo_on=0

__tc_esc() {  # $1 -> __tc_e, one line: \ \n \t \r escaped
    local s=${1//\\/\\\\}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    __tc_e=${s//$'\r'/\\r}
}

__tc_put() {  # append record $1 to the current segment, rotating when it is full
    if (( __tc_bytes > 0 && __tc_bytes + ${#1} >= __tc_segmax )); then
        (( __tc_seg += 1, __tc_bytes = 0 ))
        local -i old=$(( __tc_seg - __tc_keep ))
        # The segment written __tc_keep rotations ago is still there: the daemon has not taken it,
        # so the spool is full. Drop it (truncate; rm would be a process) and record the running
        # total of dropped records, so a later D1 still tells if this one is dropped too.
        if (( old >= 0 )) && [[ -s "$__tc_dir/$__tc_sid.$old.rec" ]]; then
            { : >| "$__tc_dir/$__tc_sid.$old.rec" } 2>/dev/null
            (( __tc_dropped += __tc_cnt[old % __tc_keep + 1] ))
            local d="D1	b	$__tc_sid	$__tc_dropped"
            { builtin print -r -- "$d" >> "$__tc_dir/$__tc_sid.$__tc_seg.rec" } 2>/dev/null
            (( __tc_bytes += ${#d} + 1 ))
        fi
        (( __tc_cnt[__tc_seg % __tc_keep + 1] = 0 ))
    fi
    { builtin print -r -- "$1" >> "$__tc_dir/$__tc_sid.$__tc_seg.rec" } 2>/dev/null \
        && (( __tc_bytes += ${#1} + 1, __tc_cnt[__tc_seg % __tc_keep + 1] += 1 ))
}

__tc_preexec() {  # $1: the line as typed (empty when history dropped it), $3: the full text
    local lastarg=$_ t=$EPOCHREALTIME cmd=$1
    if [[ -z $cmd ]]; then
        # zsh hands preexec an empty line when history dropped it (hist_ignore_space): a
        # space-prefixed command.
        [[ $__tc_ignore_space == 1 ]] && { : "$lastarg"; return 0 }
        cmd=$3
    fi
    if [[ ! -d $__tc_dir || ( $__tc_ignore_space == 1 && $cmd == ' '* ) ]]; then
        : "$lastarg"; return 0
    fi
    (( __tc_n += 1 ))
    __tc_esc "$cmd"
    local c=$__tc_e
    __tc_esc "$PWD"
    __tc_put "S1	b	$__tc_sid	$__tc_n	$t	$$	$__tc_inter	zsh	$__tc_e	$c"
    __tc_open=1
    if [[ $__tc_junit == 1 && $cmd == *(test|tox|nox|check)* ]]; then
        __tc_pyo_on=1 __tc_pyo_had=${PYTEST_ADDOPTS+1} __tc_pyo_old=${PYTEST_ADDOPTS-}
        __tc_pyo_ours="'--junitxml=$__tc_dir/$__tc_sid.$__tc_n.junit.xml'"
        export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:+$PYTEST_ADDOPTS }$__tc_pyo_ours"
    fi
    : "$lastarg"
}

__tc_precmd() {
    local -i s=$?
    local lastarg=$_
    if (( __tc_open )); then
        __tc_open=0
        __tc_put "E1	b	$__tc_sid	$__tc_n	$EPOCHREALTIME	$s	"
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
    : "$lastarg"
    return s
}

# First in precmd so $? is the user's command's status; last in preexec so other hooks
# (oh-my-zsh titles, starship timers) run first and their cost is not in the measured duration.
typeset -ga precmd_functions preexec_functions
precmd_functions=(__tc_precmd ${precmd_functions:#__tc_precmd})
preexec_functions=(${preexec_functions:#__tc_preexec} __tc_preexec)
fi
