# tracecap shell hook for fish >= 3.1, printed by `tracecap shell-init fish`.
# Use: tracecap shell-init fish | source   (in ~/.config/fish/config.fish)
# Per command it runs builtins only (no process, no subshell, no network) and appends one start and
# one end record, one write each, to a spool file the tracecap daemon follows; the record format
# (version 2) is specified at the top of agent/sources/shell.py. It never prints, keeps $status, and
# does nothing when the spool directory is missing. fish has no builtin wall clock, so its records
# carry the duration fish measured ($CMD_DURATION) and the daemon stamps the wall time when it reads
# them. fish strings cannot hold NUL, the record terminator, so the command line is written raw.
#
# Cost. A command substitution (`math` and `string length` included) costs fish more than the rest
# of the hook together, and every builtin call counts, so the per-command path has neither:
# - command numbers come from a list (__tc_q) refilled every 100 commands;
# - the segment's size is charged per refill: each short command (under __tc_shortmax characters,
#   told by a glob in a `switch`, which is no command) is charged the most bytes it can take (4 a
#   character, the cwd and the fields); a longer command is measured on its own;
# - a change of $PWD (an --on-variable handler) sets the list aside, so the next command refills
#   and the refill escapes the new cwd: nothing is done for the cwd per command;
# - the pytest report path is put back by a postexec handler that exists only until then.
# The rare work (refill, rotation, a new cwd) is in functions of its own. Records are one `printf`
# of one string whose field separators are literal TABs.
if not set -q __tracecap_loaded
    set -g __tracecap_loaded 1
    set -g __tc_dir @SPOOL@
    set -g __tc_junit @PYTEST_JUNIT@
    set -g __tc_segmax @SEGMENT_BYTES@
    set -g __tc_keep @SEGMENTS@
    set -g __tc_hide # glob of the commands not recorded: ' *' when a leading space hides one
    test @IGNORE_SPACE@ = 1; and set -g __tc_hide ' *'
    set -g __tc_words # globs of the lines that may run pytest, when its reports are wanted
    test $__tc_junit = 1; and set -g __tc_words '*test*' '*tox*' '*nox*' '*check*'
    set -g __tc_sid $fish_pid-r(random 100000000 999999999)(random 100000000 999999999)
    set -g __tc_f $__tc_dir/$__tc_sid.0.rec
    set -g __tc_shortmax 256
    set -g __tc_long (string repeat -n $__tc_shortmax '?')'*' # a command at least this long
    set -g __tc_d2 00 01 02 03 04 05 06 07 08 09 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95 96 97 98 99
    set -g __tc_q # command numbers still to hand out: __tc_r followed by two digits
    set -g __tc_r 0
    set -g __tc_b 0 # bytes charged per number handed out (the longest short command's record)
    set -g __tc_i # the number of the command running, empty when none is
    set -g __tc_held # numbers set aside by __tc_cd, still to give back
    set -g __tc_given 0 # how many numbers the current __tc_q started with
    set -g __tc_issued 0 # numbers used before those (each by a command started)
    set -g __tc_seg 0
    set -g __tc_bytes 0 # bytes of the current segment charged so far
    set -g __tc_dropped 0
    set -g __tc_first 0 0 0 0 0 0 0 0 # per segment slot: commands started before the segment
    set -g __tc_inter 0
    status is-interactive; and set -g __tc_inter 1
    set -g __tc_head "H2	$__tc_sid	$fish_pid	$__tc_inter	fish"
    # Records still to write before the next one: the header of a new segment, and its drop total.
    set -g __tc_pre $__tc_head
    set -g __tc_pwd # the $PWD that __tc_cwd escapes
    set -g __tc_cwd

    # $PWD changed (a loop may cd many times a command): only set the numbers left aside, so that the
    # next command refills, and the refill escapes the new cwd (__tc_cwd_set) and charges for it.
    function __tc_cd --on-variable PWD
        set -q __tc_q[1]; or return
        set -g __tc_held $__tc_q
        set -g __tc_q
    end

    function __tc_cwd_set # __tc_cwd: $PWD escaped to one field (\ \n \t \r), and its charge
        __tc_return # numbers charged for the old cwd's length
        set -g __tc_pwd $PWD
        set -g __tc_cwd (string replace -a -- \\ \\\\ $PWD | string replace -a -- \t \\t \
            | string replace -a -- \r \\r | string join \\n)
        set -g __tc_b (math 4 \* $__tc_shortmax + 4 \* (string length -- "$__tc_cwd") + 90)
    end

    function __tc_return # give back the numbers not handed out, and their charge
        set -l k (count $__tc_q $__tc_held)
        set -g __tc_held
        set -g __tc_bytes (math $__tc_bytes - $k \* $__tc_b)
        set -g __tc_issued (math $__tc_issued + $__tc_given - $k)
        set -g __tc_given 0
        set -g __tc_q
    end

    function __tc_none # this command is not recorded
        set -g __tc_i
        return 1
    end

    function __tc_create # start the current segment: the file made 0600, its header (and drop total)
        # $umask is fish's own: setting it sets the process umask.
        set -l m $umask
        set -g umask 0077
        printf '%s\0' $__tc_pre >>$__tc_f 2>/dev/null
        and set -g __tc_pre
        set -g umask $m
        set -q __tc_pre[1]; and return 1
        return 0
    end

    function __tc_rotate # the current segment is full: move to the next one
        set -g __tc_seg (math $__tc_seg + 1)
        set -g __tc_bytes 0
        set -g __tc_f $__tc_dir/$__tc_sid.$__tc_seg.rec
        set -g __tc_pre $__tc_head
        set -l old $__tc_dir/$__tc_sid.(math $__tc_seg - $__tc_keep).rec
        set -l slot (math $__tc_seg % $__tc_keep + 1)
        # The segment written __tc_keep rotations ago is still there: the daemon has not taken it,
        # so the spool is full. Drop it (truncate) and record the running total of dropped records
        # (a start and an end per command started in it), so a later D2 still tells if this one is
        # dropped too.
        if test $__tc_seg -ge $__tc_keep -a -s $old
            true >$old 2>/dev/null
            set -l next (math "($__tc_seg + 1) % $__tc_keep + 1")
            set -g __tc_dropped (math $__tc_dropped + 2 \* \($__tc_first[$next] - $__tc_first[$slot]\))
            set -a __tc_pre "D2	$__tc_dropped"
        end
        set -g __tc_first[$slot] $__tc_issued
    end

    function __tc_refill # hand out the next numbers (up to 100), charged to the segment; 1: none
        test "$PWD" = "$__tc_pwd"; or __tc_cwd_set
        __tc_return
        set -l k (math "min(100, floor(($__tc_segmax - $__tc_bytes) / $__tc_b))")
        if test $k -lt 1
            __tc_rotate
            set k (math "max(1, min(100, floor($__tc_segmax / $__tc_b)))")
        end
        set -q __tc_pre[1]; and not __tc_create; and return 1
        set -g __tc_r (math $__tc_r + 1)
        set -g __tc_bytes (math $__tc_bytes + $k \* $__tc_b)
        set -g __tc_q $__tc_r$__tc_d2[1..$k]
        set -g __tc_given $k
    end

    function __tc_long_cmd # a command of __tc_shortmax characters or more: measured on its own
        set -p __tc_q $__tc_i # give its number back, with the charge that came with it
        __tc_return
        set -l size (math 4 \* (string length -- "$argv[1]$__tc_cwd") + 90)
        if test (math $__tc_bytes + $size) -ge $__tc_segmax -a $__tc_bytes -gt 0
            __tc_rotate
        end
        set -q __tc_pre[1]; and not __tc_create; and return 1
        set -g __tc_r (math $__tc_r + 1)
        set -g __tc_bytes (math $__tc_bytes + $size)
        set -g __tc_i $__tc_r$__tc_d2[1]
        set -g __tc_given 1 # taken at once: the next command refills
        test $__tc_junit = 1; and string match -qr -- 'test|tox|nox|check' $argv[1]
        and __tc_pyo_set
        return 0
    end

    function __tc_pyo_set # a line that may run pytest: append our report path to PYTEST_ADDOPTS
        set -g __tc_pyo_had (set -q PYTEST_ADDOPTS; and echo 1)
        set -g __tc_pyo_old "$PYTEST_ADDOPTS"
        set -g __tc_pyo_ours "'--junitxml=$__tc_dir/$__tc_sid.$__tc_i.junit.xml' -o junit_family=xunit1"
        if test -n "$PYTEST_ADDOPTS"
            set -gx PYTEST_ADDOPTS "$PYTEST_ADDOPTS $__tc_pyo_ours"
        else
            set -gx PYTEST_ADDOPTS $__tc_pyo_ours
        end
        # Put it back when the line ends, with a handler that exists only until then.
        function __tc_pyo_restore --on-event fish_postexec
            functions -e __tc_pyo_restore
            set -l ours (string trim -- "$__tc_pyo_old $__tc_pyo_ours")
            if test "$PYTEST_ADDOPTS" = "$ours"
                if test -n "$__tc_pyo_had"
                    set -gx PYTEST_ADDOPTS $__tc_pyo_old
                else
                    set -e PYTEST_ADDOPTS
                end
            else if set -q PYTEST_ADDOPTS # the line changed it: take only our path out
                set -gx PYTEST_ADDOPTS (string replace -- $__tc_pyo_ours '' "$PYTEST_ADDOPTS" | string trim)
            end
        end
    end

    # The two per-command handlers: builtins only, no command substitution. A command not recorded
    # leaves __tc_i empty, so its end is not written either; fish restores $status after handlers.
    function __tc_preexec --on-event fish_preexec
        test -w $__tc_dir; or __tc_none; or return
        set -q __tc_q[1]; or __tc_refill; or __tc_none; or return
        set -g __tc_i $__tc_q[1]
        set -e __tc_q[1]
        switch $argv[1]
            case $__tc_hide
                set -g __tc_i
                return
            case $__tc_long
                __tc_long_cmd $argv[1]; or __tc_none; or return
            case $__tc_words
                __tc_pyo_set
        end
        printf '%s\0' "S2	$__tc_i		$__tc_cwd	r$argv[1]" >>$__tc_f
    end

    function __tc_postexec --on-event fish_postexec
        set -l s $status
        test -n "$__tc_i" -a -w $__tc_dir
        and printf '%s\0' "E2	$__tc_i		$s	$CMD_DURATION" >>$__tc_f
    end

    __tc_cwd_set
end
