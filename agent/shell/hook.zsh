# tracecap shell hook for zsh >= 5.1, printed by `tracecap shell-init zsh`.
# Use: eval "$(tracecap shell-init zsh)" in ~/.zshrc (after oh-my-zsh or starship is fine).
# Per command it runs builtins only (no process, no subshell, no network) and appends one start and
# one end record, one write each, to a spool file the tracecap daemon follows; the record format
# (version 2) is specified at the top of agent/sources/shell.py. It never prints, keeps $? and $_,
# and does nothing when the spool directory is missing. With zsh/system the segment stays open on a
# close-on-exec descriptor and a record is one syswrite: no open, no redirection. It writes only
# into a spool directory this user owns that nobody else may use (0700) and a segment file this
# user owns (0600), checked with zsh/stat when a segment is made, never per command; a shell that
# finds the spool unsafe records nothing more.
if [[ -n ${ZSH_VERSION-} && -z ${__tracecap_loaded-} ]] && zmodload zsh/datetime 2>/dev/null; then
typeset -g __tracecap_loaded=1
typeset -g __tc_dir=@SPOOL@
typeset -g __tc_rdir=@REPORTS@  # pytest's reports: a memory-backed directory
typeset -g __tc_ignore_space=@IGNORE_SPACE@
typeset -g __tc_junit=@PYTEST_JUNIT@
typeset -gi __tc_segmax=@SEGMENT_BYTES@
typeset -gi __tc_keep=@SEGMENTS@
typeset -g __tc_sid="$$-${EPOCHREALTIME//./}"
typeset -g __tc_f=$__tc_dir/$__tc_sid.0.rec
typeset -gi __tc_n=0 __tc_seg=0 __tc_bytes=0 __tc_open=0 __tc_dropped=0
typeset -g __tc_inter=0
[[ -o interactive ]] && __tc_inter=1
typeset -g __tc_head="H2	$__tc_sid	$$	$__tc_inter	zsh"
# Records still to write before the next one: the header of a new segment, and its drop total.
typeset -ga __tc_pre
__tc_pre=("$__tc_head")
typeset -ga __tc_first  # per segment slot: commands started before the segment
__tc_first=(0 0 0 0 0 0 0 0)
typeset -g __tc_pwd= __tc_cwd= __tc_pyo_had= __tc_pyo_old= __tc_pyo_ours=
typeset -gi __tc_pyo_on=0 __tc_fd=0
# sysopen creates a segment 0600 whatever the umask and keeps it open; without zsh/system, a
# subshell under umask 077 creates it and each record is appended with a redirection.
zmodload -F zsh/system b:sysopen b:syswrite 2>/dev/null
zmodload -F zsh/stat b:zstat 2>/dev/null  # zstat only: the `stat` program stays as it is

__tc_private() {  # a path, or -f FD: 0 when this user owns it and nobody else may use it
    if (( $+builtins[zstat] )); then
        local -A st
        zstat -H st "$@" 2>/dev/null || return 1
        (( st[uid] == EUID && !(st[mode] & 8#077) ))
    else
        [[ $1 != -f && -O $1 ]]
    fi
}

__tc_refuse() {  # the spool is someone else's or open to others: nothing more is written
    __tc_f=/dev/null/unsafe __tc_dir=/dev/null/unsafe __tc_fd=0
    return 1
}

# Functions are few on the per-command path: each call costs zsh a fresh heap (mmap, munmap).
__tc_put() {  # append the record $1 to the current segment: segment starts and other rare cases
    if (( __tc_fd )); then
        syswrite -o $__tc_fd -- $1 || __tc_fd=0
    else
        { builtin print -rn -- $1 >> $__tc_f } 2>/dev/null
    fi
}

__tc_cd() {  # $PWD -> __tc_cwd, escaped to one field: \ \n \t \r
    __tc_pwd=$PWD
    local s=${PWD//\\/\\\\}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    __tc_cwd=${s//$'\r'/\\r}
}

__tc_create() {  # start the current segment: the file made 0600, its header (and drop total)
    local -i fd
    (( __tc_fd )) && { exec {__tc_fd}>&- } 2>/dev/null
    __tc_fd=0
    [[ ! -d $__tc_dir ]] || __tc_private $__tc_dir || __tc_refuse || return 1
    [[ ! -e $__tc_f ]] || __tc_private $__tc_f || __tc_refuse || return 1
    if (( $+builtins[sysopen] && $+builtins[syswrite] )) && { sysopen -a -o cloexec,creat -m 600 -u fd $__tc_f } 2>/dev/null; then
        if [[ ! -f /dev/fd/$fd ]] || ! __tc_private -f $fd; then  # not the file we meant to make
            exec {fd}>&-
            __tc_refuse
            return 1
        fi
        __tc_fd=fd
    elif [[ ! -e $__tc_f ]]; then
        # No sysopen: a redirection would make the file with the user's umask. A subshell makes it
        # under 077 instead (once per segment, and only in a zsh without zsh/system).
        ( umask 077 && : >> $__tc_f ) 2>/dev/null
        [[ ! -e $__tc_f ]] || __tc_private $__tc_f || __tc_refuse || return 1
    fi
    __tc_put "${(pj:\0:)__tc_pre}"$'\0' && [[ -f $__tc_f ]] && __tc_pre=()
}

__tc_rotate() {  # the current segment is full: move to the next one
    (( __tc_seg += 1, __tc_bytes = 0 ))
    __tc_f=$__tc_dir/$__tc_sid.$__tc_seg.rec
    __tc_pre=("$__tc_head")
    local old=$__tc_dir/$__tc_sid.$(( __tc_seg - __tc_keep )).rec
    # The segment written __tc_keep rotations ago is still there: the daemon has not taken it, so
    # the spool is full. Drop it (truncate; rm would be a process) and record the running total of
    # dropped records (a start and an end per command started in it), so a later D2 still tells
    # if this one is dropped too.
    if (( __tc_seg >= __tc_keep )) && [[ -s $old ]]; then
        { : >| $old } 2>/dev/null
        (( __tc_dropped += 2 * (__tc_first[(__tc_seg + 1) % __tc_keep + 1] - __tc_first[__tc_seg % __tc_keep + 1]) ))
        __tc_pre+=("D2	$__tc_dropped")
    fi
    (( __tc_first[__tc_seg % __tc_keep + 1] = __tc_n ))
}

# The per-command functions use globals, not locals: zsh creates and scans parameters for each
# local, which costs more here than the rest of the work.
typeset -g __tc_la= __tc_cmd= __tc_t= __tc_rec=
typeset -gi __tc_size=0 __tc_s=0

__tc_preexec() {  # $1: the line as typed (empty when history dropped it), $3: the full text
    __tc_la=$_ __tc_cmd=$1 __tc_t=$EPOCHREALTIME
    if [[ -z $__tc_cmd ]]; then
        # zsh hands preexec an empty line when history dropped it (hist_ignore_space): a
        # space-prefixed command.
        [[ $__tc_ignore_space == 1 ]] && { : "$__tc_la"; return 0 }
        __tc_cmd=$3
    fi
    if [[ $__tc_ignore_space == 1 && $__tc_cmd == ' '* ]] || ! [[ -f $__tc_f || -w $__tc_dir ]]; then
        : "$__tc_la"; return 0
    fi
    [[ $PWD == $__tc_pwd ]] || __tc_cd
    __tc_size=${#__tc_cmd}+${#__tc_cwd}+90  # this command's start and end records
    [[ -f $__tc_f ]] || (( ! __tc_bytes )) || __tc_rotate  # the segment was removed: a new one
    (( __tc_bytes == 0 || __tc_bytes + __tc_size < __tc_segmax )) || __tc_rotate
    (( ! $#__tc_pre )) || __tc_create
    (( __tc_n += 1, __tc_bytes += __tc_size, __tc_open = 1 ))
    # One write; zsh strings can hold NUL, the record's terminator: it becomes ^@.
    __tc_rec="S2"$'\t'$__tc_n$'\t'$__tc_t$'\t'$__tc_cwd$'\tr'${__tc_cmd//$'\0'/^@}$'\0'
    if (( __tc_fd )); then syswrite -o $__tc_fd -- $__tc_rec || __tc_fd=0; else __tc_put $__tc_rec; fi
    # The report only into a private directory of ours (pytest would make a missing one, open).
    if [[ $__tc_junit == 1 && $__tc_cmd == *(test|tox|nox|check)* && -d $__tc_rdir ]] && __tc_private $__tc_rdir; then
        __tc_pyo_on=1 __tc_pyo_had=${PYTEST_ADDOPTS+1} __tc_pyo_old=${PYTEST_ADDOPTS-}
        __tc_pyo_ours="'--junitxml=$__tc_rdir/$__tc_sid.$__tc_n.junit.xml' -o junit_family=xunit1"
        export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:+$PYTEST_ADDOPTS }$__tc_pyo_ours"
    fi
    : "$__tc_la"
}

__tc_precmd() {
    __tc_s=$? __tc_la=$_
    if (( __tc_open )); then
        __tc_open=0
        __tc_rec="E2"$'\t'$__tc_n$'\t'$EPOCHREALTIME$'\t'$__tc_s$'\t\0'
        if (( __tc_fd )); then syswrite -o $__tc_fd -- $__tc_rec || __tc_fd=0; else __tc_put $__tc_rec; fi
        (( ! __tc_pyo_on )) || __tc_pyo_restore
    fi
    : "$__tc_la"
    return __tc_s
}

__tc_pyo_restore() {  # PYTEST_ADDOPTS as the user had it
    __tc_pyo_on=0
    if [[ ${PYTEST_ADDOPTS-} == "${__tc_pyo_old:+$__tc_pyo_old }$__tc_pyo_ours" ]]; then
        if [[ -n $__tc_pyo_had ]]; then PYTEST_ADDOPTS=$__tc_pyo_old; else unset PYTEST_ADDOPTS; fi
    else  # the command changed PYTEST_ADDOPTS itself: keep its value, minus our option
        PYTEST_ADDOPTS=${PYTEST_ADDOPTS/ $__tc_pyo_ours/}
        PYTEST_ADDOPTS=${PYTEST_ADDOPTS/$__tc_pyo_ours/}
    fi
}

# First in precmd so $? is the user's command's status; last in preexec so other hooks
# (oh-my-zsh titles, starship timers) run first and their cost is not in the measured duration.
typeset -ga precmd_functions preexec_functions
precmd_functions=(__tc_precmd ${precmd_functions:#__tc_precmd})
preexec_functions=(${preexec_functions:#__tc_preexec} __tc_preexec)
fi
