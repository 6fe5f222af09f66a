# tracecap shell hook for bash >= 5.0, printed by `tracecap shell-init bash`.
# Use: eval "$(tracecap shell-init bash)" at the end of ~/.bashrc.
# Per command it runs builtins only (no process, no subshell, no network) and appends one start and
# one end record, each with a single redirection, to a spool file the tracecap daemon follows; the
# record format (version 2) is specified at the top of agent/sources/shell.py. It never prints, keeps
# $? and $_, and does nothing when the spool directory is missing. The DEBUG trap does one variable
# test per simple command; the work happens once per command line.
if [[ -n "${BASH_VERSION:-}" && -z "${__tracecap_loaded:-}" && $- == *i* && -n "${EPOCHREALTIME:-}" ]]; then
__tracecap_loaded=1
__tc_dir=@SPOOL@
__tc_ignore_space=@IGNORE_SPACE@
__tc_junit=@PYTEST_JUNIT@
__tc_segmax=@SEGMENT_BYTES@
__tc_keep=@SEGMENTS@
__tc_sid="$$-${EPOCHREALTIME//[.,]/}"
__tc_f="$__tc_dir/$__tc_sid.0.rec"
# The header goes first into each segment, with the segment's creation (see __tc_create).
__tc_head="H2	$__tc_sid	$$	1	bash"
__tc_pre=("$__tc_head")  # records still to write before the next one (no NUL: bash strings end there)
__tc_n=0 __tc_seg=0 __tc_bytes=0 __tc_dropped=0 __tc_armed= __tc_open=0 __tc_hist=-1
__tc_pwd= __tc_cwd=
__tc_first=(0 0 0 0 0 0 0 0)  # per segment slot: commands started before the segment
__tc_pyo_on=0 __tc_pyo_had= __tc_pyo_old= __tc_pyo_ours=

__tc_cd() {  # $PWD -> __tc_cwd, escaped to one field: \ \n \t \r
    __tc_pwd=$PWD
    local s=${PWD//\\/\\\\}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    __tc_cwd=${s//$'\r'/\\r}
}

__tc_create() {  # start the current segment: header (and drop total) with the file made 0600
    # bash cannot read its umask without printing it: it goes through a scratch file.
    local m= u="$__tc_dir/$__tc_sid.umask"
    { builtin umask >| "$u" && IFS= builtin read -r m < "$u"; } 2>/dev/null
    [[ -n $m ]] && builtin umask 077
    { builtin printf '%s\0' "${__tc_pre[@]}" >> "$__tc_f"; } 2>/dev/null && __tc_pre=()
    [[ -n $m ]] && builtin umask "$m"
}

__tc_rotate() {  # the current segment is full: move to the next one
    (( __tc_seg += 1, __tc_bytes = 0 ))
    __tc_f="$__tc_dir/$__tc_sid.$__tc_seg.rec"
    __tc_pre=("$__tc_head")
    local old="$__tc_dir/$__tc_sid.$(( __tc_seg - __tc_keep )).rec"
    # The segment written __tc_keep rotations ago is still there: the daemon has not taken it, so
    # the spool is full. Drop it (truncate; rm would be a process) and record the running total of
    # dropped records, so a later D2 still tells if this one is dropped too.
    # Its records: a start and an end for each command started in it.
    if (( __tc_seg >= __tc_keep )) && [[ -s $old ]]; then
        { : >| "$old"; } 2>/dev/null
        (( __tc_dropped += 2 * (__tc_first[(__tc_seg + 1) % __tc_keep] - __tc_first[__tc_seg % __tc_keep]) ))
        __tc_pre+=("D2	$__tc_dropped")
    fi
    (( __tc_first[__tc_seg % __tc_keep] = __tc_n ))
}

__tc_start() {  # $1 start time; $2 form: h (the newest history line) or r (the text $3)
    [[ $PWD == "$__tc_pwd" ]] || __tc_cd
    # The size of a command's records, start and end; for bash's `history 1` form only its first
    # simple command ($3) is known: see the spec.
    (( __tc_bytes == 0 || __tc_bytes + ${#3} + ${#__tc_cwd} + 90 < __tc_segmax )) || __tc_rotate
    (( ! ${#__tc_pre[@]} )) || __tc_create
    (( __tc_n += 1, __tc_bytes += ${#3} + ${#__tc_cwd} + 90 ))
    if [[ $2 == h && -z ${HISTTIMEFORMAT-} ]]; then
        { builtin printf 'S2\t%s\t%s\t%s\th' "$__tc_n" "$1" "$__tc_cwd"
          builtin history 1
          builtin printf '\0'; } >> "$__tc_f"
    elif [[ $2 == h ]]; then  # a temporary assignment costs as much as the write: only if needed
        { builtin printf 'S2\t%s\t%s\t%s\th' "$__tc_n" "$1" "$__tc_cwd"
          HISTTIMEFORMAT= builtin history 1
          builtin printf '\0'; } >> "$__tc_f"
    else
        builtin printf 'S2\t%s\t%s\t%s\tr%s\0' "$__tc_n" "$1" "$__tc_cwd" "$3" >> "$__tc_f"
    fi
    __tc_open=1
    if [[ $__tc_junit == 1 && $3 == *@(test|tox|nox|check)* ]]; then
        __tc_pyo_on=1 __tc_pyo_had=${PYTEST_ADDOPTS+1} __tc_pyo_old=${PYTEST_ADDOPTS-}
        __tc_pyo_ours="'--junitxml=$__tc_dir/$__tc_sid.$__tc_n.junit.xml'"
        export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:+$PYTEST_ADDOPTS }$__tc_pyo_ours"
    fi
}

# The DEBUG trap calls this only while armed (from the prompt to the line's first simple command).
# Called as `__tc_preexec "$_"`: a call leaves $_ at its last argument, so $_ is kept.
__tc_preexec() {
    # PROMPT_COMMAND's own first command after an empty line, or a completion function: not a
    # command of the user's; stay armed.
    [[ $BASH_COMMAND == __tc_precmd* || -n ${COMP_LINE-} ]] && return
    __tc_armed=
    [[ -w $__tc_dir ]] || return
    # HISTCMD (here: the newest entry's number) moves when the line went into history; the text
    # is then `history 1`, written straight into the record. Otherwise the line was not saved: a space-prefixed command (skip it
    # when space-prefixed commands are private) or a repeated one; bash does not say which, so
    # privacy wins, and without that setting the first simple command is all bash tells.
    if [[ $HISTCMD != "$__tc_hist" ]]; then
        __tc_hist=$HISTCMD
        __tc_start "$EPOCHREALTIME" h "$BASH_COMMAND"
    elif [[ $__tc_ignore_space != 1 || $HISTCONTROL != *@(ignorespace|ignoreboth)* ]]; then
        __tc_start "$EPOCHREALTIME" r "$BASH_COMMAND"
    fi
}

__tc_precmd() {  # first in PROMPT_COMMAND; $1 is $_ of the user's command
    local s=$? t=$EPOCHREALTIME
    if [[ -n $__tc_armed ]]; then
        __tc_armed=
        # A line bash ran without a DEBUG trap in this shell, such as `(exit 3)` (subshells do
        # not inherit the trap): its start is only known now. Here HISTCMD is the number the next
        # line will get, one past the newest entry.
        if (( HISTCMD - 1 != __tc_hist )) && [[ -w $__tc_dir ]]; then
            (( __tc_hist = HISTCMD - 1 ))
            __tc_start "$t" h ""
        fi
    fi
    if (( __tc_open )); then
        __tc_open=0
        [[ -w $__tc_dir ]] && builtin printf 'E2\t%s\t%s\t%s\t\0' "$__tc_n" "$t" "$s" >> "$__tc_f"
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

if [[ -n "${bash_preexec_imported:-}${__bp_imported:-}" ]]; then
    # bash-preexec owns the DEBUG trap and PROMPT_COMMAND and hands preexec the whole line; join
    # its arrays instead.
    __tc_bp_preexec() {
        [[ -w $__tc_dir ]] || return
        [[ $__tc_ignore_space == 1 && $1 == [\ ]* ]] && return
        __tc_hist=$HISTCMD
        __tc_start "$EPOCHREALTIME" r "$1"
    }
    __tc_bp_precmd() { __tc_precmd "$_"; }
    precmd_functions=(__tc_bp_precmd "${precmd_functions[@]}")
    preexec_functions+=(__tc_bp_preexec)
else
    __tc_prev_trap=$(trap -p DEBUG)
    __tc_prev_trap=${__tc_prev_trap#trap -- \'}
    __tc_prev_trap=${__tc_prev_trap%\' DEBUG}
    __tc_prev_trap=${__tc_prev_trap//\'\\\'\'/\'}
    # `[[ ]]` leaves $_ alone, so the common case (not armed) costs one test.
    if [[ -n $__tc_prev_trap ]]; then
        trap -- "[[ -z \$__tc_armed ]] || __tc_preexec \"\$_\"; $__tc_prev_trap" DEBUG
    else
        trap -- '[[ -z $__tc_armed ]] || __tc_preexec "$_"' DEBUG
    fi
    unset __tc_prev_trap
    # Armed last, so commands that PROMPT_COMMAND itself runs are never taken for the user's.
    if [[ ${PROMPT_COMMAND@a} == *a* ]]; then
        PROMPT_COMMAND=('__tc_precmd "$_"' "${PROMPT_COMMAND[@]}" '__tc_armed=1')
    else
        PROMPT_COMMAND="__tc_precmd \"\$_\"${PROMPT_COMMAND:+
$PROMPT_COMMAND}
__tc_armed=1"
    fi
fi
fi
