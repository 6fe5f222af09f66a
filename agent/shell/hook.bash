# tracecap shell hook for bash >= 5.0, printed by `tracecap shell-init bash`.
# Use: eval "$(tracecap shell-init bash)" at the end of ~/.bashrc.
# Per command it runs builtins only (no process, no subshell, no network) and writes one start and
# one end record to a spool file the tracecap daemon follows; the record format (version 2) is
# specified at the top of agent/sources/shell.py. It never prints, keeps $? and $_, and does
# nothing when the spool directory is missing. It writes only into a spool directory this user owns
# that nobody else may use (0700) and a segment file this user owns (0600): checked when a segment
# is made (a shell's first command, then every spool_max_bytes/4), never per command; a shell that
# finds the spool unsafe records nothing more.
# Cost: the DEBUG trap does one variable test per simple command; the work happens once per line.
# bash copies a function's whole body each time it calls one, so the per-line functions
# (__tc_preexec, __tc_precmd) hold the common case only and call out for the rest; the segment
# stays open on a descriptor, so a record is a write with no open; PS0 arms the trap, which costs
# no command.
if [[ -n "${BASH_VERSION:-}" && -z "${__tracecap_loaded:-}" && $- == *i* && -n "${EPOCHREALTIME:-}" ]]; then
__tracecap_loaded=1
__tc_dir=@SPOOL@
__tc_rdir=@REPORTS@  # pytest's reports: a memory-backed directory (see StatePaths.report_dir)
__tc_ignore_space=@IGNORE_SPACE@
__tc_junit=@PYTEST_JUNIT@
__tc_segmax=@SEGMENT_BYTES@
__tc_keep=@SEGMENTS@
__tc_sid="$$-${EPOCHREALTIME//[.,]/}"
__tc_head="H2	$__tc_sid	$$	1	bash"
# Segment -1 counts as full, so the first command starts segment 0 (see __tc_segment).
__tc_seg=-1 __tc_bytes=$__tc_segmax __tc_f= __tc_fd=
__tc_pre=()  # records still to write before the next one (no NUL: bash strings end there)
__tc_first=(0 0 0 0 0 0 0 0)  # per segment slot: commands started before the segment
__tc_n=0 __tc_sz=0 __tc_s=0 __tc_t= __tc_dropped=0 __tc_open=0 __tc_hist=-1 __tc_last=-1 __tc_left=0
# __tc_go: 0 idle; 1 from the moment a line is read to its first simple command; 2 while the rest
# of a recorded line is watched for a test runner (see __tc_watch).
__tc_go=0 __tc_z=() __tc_ps0=
__tc_pwd= __tc_cwd= __tc_cwdlen=90
__tc_pyo_on=0 __tc_pyo_had= __tc_pyo_old= __tc_pyo_ours=
# bash marks none of its users' descriptors close-on-exec; its loadable `fdflags`, where it is
# installed, does, and then commands started from the shell do not inherit the segment's.
# Elsewhere they do: a write-only descriptor of a 0600 file in a 0700 directory.
# A file's owner and mode come from bash's loadable `stat` where it is installed (kept disabled
# between uses, so that the `stat` program is not shadowed), else from one `stat` process.
__tc_cloexec() { :; }
__tc_statb=0 __tc_unsafe=
for __tc_x in ${BASH_LOADABLES_PATH//:/ } /usr/lib/bash /usr/local/lib/bash /usr/lib64/bash /opt/homebrew/lib/bash; do
    if [[ $__tc_statb == 0 && -f $__tc_x/stat ]] && { builtin enable -f "$__tc_x/stat" stat; } 2>/dev/null; then
        builtin enable -n stat
        __tc_statb=1
    fi
    if [[ -f $__tc_x/fdflags ]] && { builtin enable -f "$__tc_x/fdflags" fdflags; } 2>/dev/null; then
        __tc_cloexec() { { builtin fdflags -s +cloexec "$__tc_fd"; } 2>/dev/null; }
        break
    fi
done
unset __tc_x

__tc_private() {  # $1: a path (a link is followed). 0 when this user owns it and its mode gives
    # nobody else any access.
    [[ -O $1 ]] || return 1
    local s=
    if (( __tc_statb )); then
        local -A __tc_st=()
        builtin enable stat && { stat -L -A __tc_st -- "$1"; } 2>/dev/null
        builtin enable -n stat
        s="${__tc_st[uid]-} ${__tc_st[perms]-}"
    else
        s=$(command stat -Lc '%u %a' -- "$1" 2>/dev/null || command stat -Lf '%u %Lp' -- "$1" 2>/dev/null)
    fi
    [[ ${s%% *} == "$EUID" && ${s##* } == +([0-7])00 ]]
}

# The DEBUG trap's call while __tc_go is set, as `__tc_preexec "$_"` (a call leaves $_ at its last
# argument, so $_ is kept). The common case only: the line's first command, the line went into
# history (HISTCMD, the newest entry's number, moved), so its text is `history 1`, written straight
# into the record, and nothing else needs doing first. echo -E with literal tabs, not printf: no
# format to parse. Writes close stderr first: a descriptor the user closed fails silently, and
# the next command starts a new segment.
__tc_preexec() {
    if [[ $PWD${COMP_LINE-}${HISTTIMEFORMAT-} == "$__tc_pwd" && -f $__tc_f ]] && __tc_sz=${#BASH_COMMAND} &&
        (( __tc_go == 1 && HISTCMD != __tc_hist && __tc_bytes + __tc_sz + __tc_cwdlen < __tc_segmax )); then
        # __tc_go 2: the line may run pytest after a first command such as `cd`; watch its next few.
        (( __tc_n += 1, __tc_bytes += __tc_sz + __tc_cwdlen, __tc_hist = HISTCMD, __tc_go = 2 * __tc_junit, __tc_left = 8, __tc_open = 1 ))
        { builtin echo -nE "S2	$__tc_n	$EPOCHREALTIME	$__tc_cwd	h"
          builtin history 1
          builtin echo -ne '\0'; } 2>&- >&$__tc_fd || __tc_bytes=$__tc_segmax
        [[ $__tc_junit$BASH_COMMAND != 1*@(test|tox|nox|check)* ]] || __tc_pyo_set
    else
        __tc_preexec_other
    fi
}

__tc_preexec_other() {
    if (( __tc_go == 2 )); then  # a later command of a recorded line, such as pytest in `cd x && pytest`
        if [[ $BASH_COMMAND == *@(test|tox|nox|check)* ]]; then __tc_pyo_set
        elif (( (__tc_left -= 1) <= 0 )); then __tc_go=0
        fi
        return
    fi
    [[ -n ${COMP_LINE-} ]] && return  # a completion function: stay armed
    __tc_go=0
    if (( HISTCMD != __tc_hist )); then
        __tc_hist=$HISTCMD
        __tc_start "$EPOCHREALTIME" h "$BASH_COMMAND"
    # The line was not saved: a space-prefixed command (skipped when space-prefixed commands are
    # private) or a repeated one; bash does not say which, so privacy wins, and without that
    # setting the first simple command is all bash tells.
    elif [[ $__tc_ignore_space != 1 || $HISTCONTROL != *@(ignorespace|ignoreboth)* ]]; then
        __tc_start "$EPOCHREALTIME" r "$BASH_COMMAND"
    fi
}

# First in PROMPT_COMMAND, as `__tc_precmd "$_"`. HISTCMD here is the number the next line will
# get: when it moved since the last prompt and nothing was recorded, a line went by unseen.
# Arithmetic tests: cheaper here than [[ == ]], which matches patterns.
__tc_precmd() {
    __tc_s=$? __tc_t=$EPOCHREALTIME
    (( (HISTCMD == __tc_last || __tc_open) && !__tc_pyo_on )) || __tc_precmd_other
    (( !__tc_open )) || builtin echo -ne "E2\t$__tc_n\t$__tc_t\t$__tc_s\t\0" 2>&- >&$__tc_fd || __tc_bytes=$__tc_segmax
    __tc_go=0 __tc_open=0 __tc_last=$HISTCMD
    return $__tc_s
}

__tc_precmd_other() {
    if (( HISTCMD != __tc_last && !__tc_open )); then
        # A line bash ran without a DEBUG trap in this shell, such as `(exit 3)` (subshells do not
        # inherit the trap): its start is only known now. Not the lines before the first prompt,
        # nor after `history -c`.
        if (( __tc_last >= 0 && HISTCMD > __tc_last )); then
            (( __tc_hist = HISTCMD - 1 ))
            __tc_start "$__tc_t" h ""
        fi
        # PS0 was set again after the hook was loaded: arm from it again.
        [[ -z $__tc_ps0 || $PS0 == *"$__tc_ps0"* ]] || PS0=$__tc_ps0$PS0
    fi
    (( __tc_pyo_on )) || return 0
    __tc_pyo_on=0  # PYTEST_ADDOPTS as the user had it
    if [[ ${PYTEST_ADDOPTS-} == "${__tc_pyo_old:+$__tc_pyo_old }$__tc_pyo_ours" ]]; then
        if [[ -n $__tc_pyo_had ]]; then PYTEST_ADDOPTS=$__tc_pyo_old; else unset PYTEST_ADDOPTS; fi
    else  # the command changed PYTEST_ADDOPTS itself: keep its value, minus our option
        PYTEST_ADDOPTS=${PYTEST_ADDOPTS/ $__tc_pyo_ours/}
        PYTEST_ADDOPTS=${PYTEST_ADDOPTS/$__tc_pyo_ours/}
    fi
}

__tc_start() {  # $1 start time; $2 form: h (the newest history line) or r (the text $3)
    [[ -w $__tc_dir && -z $__tc_unsafe ]] || return
    [[ $PWD == "$__tc_pwd" ]] || __tc_cd
    [[ -f $__tc_f ]] || __tc_bytes=$__tc_segmax  # the segment is not made yet, or was removed
    # The size of a command's records, start and end; for bash's `history 1` form only its first
    # simple command ($3) is known: see the spec.
    (( __tc_n += 1, __tc_sz = ${#3} + __tc_cwdlen, (__tc_bytes += __tc_sz) < __tc_segmax )) || __tc_segment || return
    if [[ $2 == r ]]; then
        builtin printf 'S2\t%s\t%s\t%s\tr%s\0' "$__tc_n" "$1" "$__tc_cwd" "$3" 2>&- >&$__tc_fd
    elif [[ -z ${HISTTIMEFORMAT-} ]]; then
        { builtin printf 'S2\t%s\t%s\t%s\th' "$__tc_n" "$1" "$__tc_cwd"
          builtin history 1
          builtin printf '\0'; } 2>&- >&$__tc_fd
    else  # the user's history timestamps stay out of the record
        { builtin printf 'S2\t%s\t%s\t%s\th' "$__tc_n" "$1" "$__tc_cwd"
          HISTTIMEFORMAT= builtin history 1
          builtin printf '\0'; } 2>&- >&$__tc_fd
    fi || __tc_bytes=$__tc_segmax
    __tc_open=1
    if [[ $__tc_junit != 1 ]]; then :
    elif [[ $3 == *@(test|tox|nox|check)* ]]; then __tc_pyo_set
    else __tc_go=2 __tc_left=8
    fi
}

__tc_pyo_set() {  # add command __tc_n's JUnit report to PYTEST_ADDOPTS, after the user's options
    # Only into a private directory of ours (pytest would make a missing one, readable by others).
    __tc_go=0
    [[ -d $__tc_rdir ]] && __tc_private "$__tc_rdir" || return 0
    __tc_pyo_on=1 __tc_pyo_had=${PYTEST_ADDOPTS+1} __tc_pyo_old=${PYTEST_ADDOPTS-}
    __tc_pyo_ours="'--junitxml=$__tc_rdir/$__tc_sid.$__tc_n.junit.xml' -o junit_family=xunit1"
    export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:+$PYTEST_ADDOPTS }$__tc_pyo_ours"
}

__tc_cd() {  # $PWD -> __tc_cwd, escaped to one field: \ \n \t \r
    __tc_pwd=$PWD
    local s=${PWD//\\/\\\\}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    __tc_cwd=${s//$'\r'/\\r}
    __tc_cwdlen=$(( ${#__tc_cwd} + 90 ))  # a command's records, start and end, without its text
}

# The command's records (__tc_sz bytes) do not fit the current segment, the segment is gone, or its
# header could not be written yet: start the next segment, or make the pending one. Fails when
# the file cannot be made.
__tc_segment() {
    if (( ! ${#__tc_pre[@]} )); then
        # Close the full segment's descriptor, if it is still ours.
        [[ -n $__tc_fd && /dev/fd/$__tc_fd -ef $__tc_f ]] && { builtin exec {__tc_fd}>&-; } 2>/dev/null
        (( __tc_seg += 1 ))
        __tc_f="$__tc_dir/$__tc_sid.$__tc_seg.rec"
        __tc_pre=("$__tc_head")
        local old="$__tc_dir/$__tc_sid.$(( __tc_seg - __tc_keep )).rec"
        # The segment written __tc_keep rotations ago is still there: the daemon has not taken
        # it, so the spool is full. Drop it (truncate; rm would be a process) and record the
        # running total of dropped records, so a later D2 still tells if this one is dropped too.
        # Its records: a start and an end for each command started in it.
        if (( __tc_seg >= __tc_keep )) && [[ -s $old ]]; then
            { : >| "$old"; } 2>/dev/null
            (( __tc_dropped += 2 * (__tc_first[(__tc_seg + 1) % __tc_keep] - __tc_first[__tc_seg % __tc_keep]) ))
            __tc_pre+=("D2	$__tc_dropped")
        fi
        (( __tc_first[__tc_seg % __tc_keep] = __tc_n - 1 ))
    fi
    __tc_bytes=$__tc_sz __tc_fd=
    if [[ ! -d $__tc_dir ]] || ! __tc_private "$__tc_dir"; then
        [[ -e $__tc_dir ]] && __tc_unsafe=1  # someone else's, or open to others: never written
        __tc_bytes=$__tc_segmax
        return 1
    fi
    # The file is made 0600. bash cannot read its umask without printing it: it goes through a
    # scratch file, itself 0600: made once per shell, by a subshell under umask 077 (the shell's
    # own umask cannot be changed before it is read), then only rewritten, which keeps its mode.
    local m= u="$__tc_dir/$__tc_sid.umask"
    [[ -e $u ]] || ( builtin umask 077 && : >| "$u" ) 2>/dev/null
    { builtin umask >| "$u" && IFS= builtin read -r m < "$u"; } 2>/dev/null
    [[ -n $m ]] && builtin umask 077
    { builtin exec {__tc_fd}>>"$__tc_f"; } 2>/dev/null || __tc_fd=
    [[ -n $m ]] && builtin umask "$m"
    # The file opened must be a regular file of ours that only we can use (not one planted).
    if [[ -n $__tc_fd && ! ( -f /dev/fd/$__tc_fd ) ]] || { [[ -n $__tc_fd ]] && ! __tc_private "/dev/fd/$__tc_fd"; }; then
        { builtin exec {__tc_fd}>&-; } 2>/dev/null
        __tc_fd= __tc_f= __tc_unsafe=1
    fi
    if [[ -n $__tc_fd ]]; then
        __tc_cloexec
        { builtin printf '%s\0' "${__tc_pre[@]}" >&$__tc_fd; } 2>/dev/null && __tc_pre=() && return
    fi
    __tc_bytes=$__tc_segmax  # try again with the next command
    return 1
}

if [[ -n "${bash_preexec_imported:-}${__bp_imported:-}" ]]; then
    # bash-preexec owns the DEBUG trap and PROMPT_COMMAND and hands preexec the whole line; join
    # its arrays instead.
    __tc_bp_preexec() {
        [[ $__tc_ignore_space == 1 && $1 == [\ ]* ]] && return
        __tc_hist=$HISTCMD
        __tc_start "$EPOCHREALTIME" r "$1"
        __tc_go=0
    }
    __tc_bp_precmd() { __tc_precmd "$_"; }
    precmd_functions=(__tc_bp_precmd "${precmd_functions[@]}")
    preexec_functions+=(__tc_bp_preexec)
else
    __tc_prev_trap=$(trap -p DEBUG)
    __tc_prev_trap=${__tc_prev_trap#trap -- \'}
    __tc_prev_trap=${__tc_prev_trap%\' DEBUG}
    __tc_prev_trap=${__tc_prev_trap//\'\\\'\'/\'}
    # `[[ ]]` leaves $_ alone. PROMPT_COMMAND's own call is never the user's command.
    __tc_trap='[[ $__tc_go == 0 || $BASH_COMMAND == __tc_precmd* ]] || __tc_preexec "$_"'
    trap -- "$__tc_trap${__tc_prev_trap:+; $__tc_prev_trap}" DEBUG
    unset __tc_trap __tc_prev_trap
    # PS0 is expanded once per line, after the line is read and before it runs; an arithmetic
    # subscript of an empty array arms the trap there, printing nothing and running no command, so
    # PROMPT_COMMAND's own commands run unarmed. Without promptvars PS0 is printed as it is: then
    # PROMPT_COMMAND arms last.
    if builtin shopt -q promptvars; then
        __tc_ps0='${__tc_z[__tc_go=1]-}'
        PS0=$__tc_ps0${PS0-}
        __tc_arm=
    else
        __tc_arm=__tc_go=1
    fi
    if [[ ${PROMPT_COMMAND@a} == *a* ]]; then
        PROMPT_COMMAND=('__tc_precmd "$_"' "${PROMPT_COMMAND[@]}" ${__tc_arm:+"$__tc_arm"})
    else
        PROMPT_COMMAND="__tc_precmd \"\$_\"${PROMPT_COMMAND:+
$PROMPT_COMMAND}${__tc_arm:+
$__tc_arm}"
    fi
    unset __tc_arm
fi
fi
