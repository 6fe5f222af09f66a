# tracecap shell hook for fish >= 3.1, printed by `tracecap shell-init fish`.
# Use: tracecap shell-init fish | source   (in ~/.config/fish/config.fish)
# Per command it runs builtins only (no process, no subshell, no network) and appends one start and
# one end record, one write each, to a spool file the tracecap daemon follows; the record format
# (version 2) is specified at the top of agent/sources/shell.py. It never prints, keeps $status, and
# does nothing when the spool directory is missing. fish has no builtin wall clock, so its records
# carry the duration fish measured ($CMD_DURATION) and the daemon stamps the wall time when it reads
# them. fish strings cannot hold NUL, the record terminator, so the command line is written raw.
if not set -q __tracecap_loaded
    set -g __tracecap_loaded 1
    set -g __tc_dir @SPOOL@
    set -g __tc_ignore_space @IGNORE_SPACE@
    set -g __tc_junit @PYTEST_JUNIT@
    set -g __tc_segmax @SEGMENT_BYTES@
    set -g __tc_keep @SEGMENTS@
    set -g __tc_sid $fish_pid-r(random 100000000 999999999)(random 100000000 999999999)
    set -g __tc_f $__tc_dir/$__tc_sid.0.rec
    set -g __tc_n 0
    set -g __tc_seg 0
    set -g __tc_bytes 0
    set -g __tc_open 0
    set -g __tc_dropped 0
    set -g __tc_first 0 0 0 0 0 0 0 0 # per segment slot: commands started before the segment
    set -g __tc_inter 0
    status is-interactive; and set -g __tc_inter 1
    set -g __tc_head "H2	$__tc_sid	$fish_pid	$__tc_inter	fish"
    # Records still to write before the next one: the header of a new segment, and its drop total.
    set -g __tc_pre $__tc_head
    set -g __tc_pwd
    set -g __tc_cwd
    set -g __tc_pyo_on 0

    function __tc_cd # $PWD -> __tc_cwd, escaped to one field: \ \n \t \r
        set -g __tc_pwd $PWD
        set -g __tc_cwd (string replace -a -- \\ \\\\ $PWD | string replace -a -- \t \\t \
            | string replace -a -- \r \\r | string join \\n)
    end

    function __tc_create # start the current segment: the file made 0600, its header (and drop total)
        # $umask is fish's own: setting it sets the process umask.
        set -l m $umask
        set -g umask 0077
        printf '%s\0' $__tc_pre >>$__tc_f 2>/dev/null
        and set -g __tc_pre
        set -g umask $m
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
        set -g __tc_first[$slot] $__tc_n
    end

    function __tc_preexec --on-event fish_preexec
        test -w $__tc_dir; or return
        if test $__tc_ignore_space = 1; and string match -q -- ' *' $argv[1]
            return
        end
        test "$PWD" = "$__tc_pwd"; or __tc_cd
        set -l size (string length -- "$argv[1]$__tc_cwd")
        set -l bytes (math $__tc_bytes + $size + 90)
        if test $bytes -ge $__tc_segmax -a $__tc_bytes -gt 0
            __tc_rotate
            set bytes (math $size + 90)
        end
        set -q __tc_pre[1]; and __tc_create
        set -g __tc_bytes $bytes
        set -g __tc_n (math $__tc_n + 1)
        printf 'S2\t%s\t\t%s\tr%s\0' $__tc_n $__tc_cwd $argv[1] >>$__tc_f
        set -g __tc_open 1
        if test $__tc_junit = 1; and string match -qr -- 'test|tox|nox|check' $argv[1]
            set -g __tc_pyo_on 1
            set -g __tc_pyo_had (set -q PYTEST_ADDOPTS; and echo 1)
            set -g __tc_pyo_old "$PYTEST_ADDOPTS"
            set -g __tc_pyo_ours "'--junitxml=$__tc_dir/$__tc_sid.$__tc_n.junit.xml'"
            if test -n "$PYTEST_ADDOPTS"
                set -gx PYTEST_ADDOPTS "$PYTEST_ADDOPTS $__tc_pyo_ours"
            else
                set -gx PYTEST_ADDOPTS $__tc_pyo_ours
            end
        end
    end

    function __tc_postexec --on-event fish_postexec
        set -l s $status
        test $__tc_open = 1; or return $s
        set -g __tc_open 0
        test -w $__tc_dir; and printf 'E2\t%s\t\t%s\t%s\0' $__tc_n $s $CMD_DURATION >>$__tc_f
        if test $__tc_pyo_on = 1
            set -g __tc_pyo_on 0
            set -l ours (string trim -- "$__tc_pyo_old $__tc_pyo_ours")
            if test "$PYTEST_ADDOPTS" = "$ours"
                if test -n "$__tc_pyo_had"
                    set -gx PYTEST_ADDOPTS $__tc_pyo_old
                else
                    set -e PYTEST_ADDOPTS
                end
            else if set -q PYTEST_ADDOPTS
                set -gx PYTEST_ADDOPTS (string replace -- $__tc_pyo_ours '' "$PYTEST_ADDOPTS" | string trim)
            end
        end
        return $s
    end
end
