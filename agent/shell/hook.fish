# tracecap shell hook for fish >= 3.1, printed by `tracecap shell-init fish`.
# Use: tracecap shell-init fish | source   (in ~/.config/fish/config.fish)
# Per command it runs builtins only (no process, no subshell, no network) and appends one start and
# one end record to a spool file the tracecap daemon follows; the record format is specified at the
# top of agent/sources/shell.py. It never prints, keeps $status, and does nothing when the spool
# directory is missing. fish has no builtin wall clock, so its records carry the duration fish
# measured ($CMD_DURATION) and the daemon stamps the wall time when it reads them.
if not set -q __tracecap_loaded
    set -g __tracecap_loaded 1
    set -g __tc_dir @SPOOL@
    set -g __tc_ignore_space @IGNORE_SPACE@
    set -g __tc_junit @PYTEST_JUNIT@
    set -g __tc_segmax @SEGMENT_BYTES@
    set -g __tc_keep @SEGMENTS@
    set -g __tc_sid $fish_pid-r(random 100000000 999999999)(random 100000000 999999999)
    set -g __tc_n 0
    set -g __tc_seg 0
    set -g __tc_bytes 0
    set -g __tc_open 0
    set -g __tc_dropped 0
    set -g __tc_cnt 0 0 0 0 0 0 0 0
    set -g __tc_inter 0
    status is-interactive; and set -g __tc_inter 1
    set -g __tc_pyo_on 0

    function __tc_put --argument-names rec
        set -l f $__tc_dir/$__tc_sid.$__tc_seg.rec
        if test $__tc_bytes -gt 0 -a (math $__tc_bytes + (string length -- $rec)) -ge $__tc_segmax
            set -g __tc_seg (math $__tc_seg + 1)
            set -g __tc_bytes 0
            set -l old (math $__tc_seg - $__tc_keep)
            set -l of $__tc_dir/$__tc_sid.$old.rec
            # The segment written __tc_keep rotations ago is still there: the daemon has not
            # taken it, so the spool is full. Drop it (truncate) and record the running total of
            # dropped records, so a later D1 still tells if this one is dropped too.
            set f $__tc_dir/$__tc_sid.$__tc_seg.rec
            if test $old -ge 0 -a -s $of
                true >$of 2>/dev/null
                set -g __tc_dropped (math $__tc_dropped + $__tc_cnt[(math $old % $__tc_keep + 1)])
                set -l d "D1	u	$__tc_sid	$__tc_dropped"
                printf '%s\n' $d >>$f 2>/dev/null
                set -g __tc_bytes (math (string length -- $d) + 1)
            end
            set -g __tc_cnt[(math $__tc_seg % $__tc_keep + 1)] 0
        end
        printf '%s\n' $rec >>$f 2>/dev/null
        and begin
            set -g __tc_bytes (math $__tc_bytes + (string length -- $rec) + 1)
            set -l i (math $__tc_seg % $__tc_keep + 1)
            set -g __tc_cnt[$i] (math $__tc_cnt[$i] + 1)
        end
    end

    function __tc_preexec --on-event fish_preexec
        set -l cmd $argv[1]
        test -d $__tc_dir; or return
        if test $__tc_ignore_space = 1; and string match -q -- ' *' $cmd
            return
        end
        set -g __tc_n (math $__tc_n + 1)
        set -l c (string escape --style=url -- $cmd)
        set -l w (string escape --style=url -- $PWD)
        __tc_put "S1	u	$__tc_sid	$__tc_n		$fish_pid	$__tc_inter	fish	$w	$c"
        set -g __tc_open 1
        if test $__tc_junit = 1; and string match -qr -- 'test|tox|nox|check' $cmd
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
        set -l d $CMD_DURATION
        test $__tc_open = 1; or return $s
        set -g __tc_open 0
        __tc_put "E1	u	$__tc_sid	$__tc_n		$s	$d"
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
