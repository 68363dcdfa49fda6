package process

import (
	"os"
	"strconv"
	"strings"
)

// proc is a process as its /proc/<pid>/stat shows it.
type proc struct {
	pid, ppid, pgrp int
}

// descendants returns the processes below root, from one pass over /proc.
// None if /proc is not that of this process's PID namespace (unshare
// --pid without --mount-proc): the same numbers would then name other
// processes.
//
// The pass is no snapshot: a process that forks after its parent was read
// is missed, which is why KILL is repeated until nothing is left. And a
// process may exit between the pass and its signal; its number could name
// another process only after Linux has handed out every other free one,
// as it allocates them in turn.
func descendants(root int) []proc {
	if self, err := os.Readlink("/proc/self"); err != nil || self != strconv.Itoa(os.Getpid()) {
		return nil
	}
	dir, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	names, _ := dir.Readdirnames(-1)
	_ = dir.Close()

	children := map[int][]proc{}
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue // not a process
		}
		b, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		if p, ok := parseStat(pid, string(b)); ok {
			children[p.ppid] = append(children[p.ppid], p)
		}
	}

	var below []proc
	seen := map[int]bool{root: true} // a torn read must not loop forever
	queue := children[root]
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p.pid] {
			continue
		}
		seen[p.pid] = true
		below = append(below, p)
		queue = append(queue, children[p.pid]...)
	}
	return below
}

// parseStat reads the parent and process group from the text of
// /proc/<pid>/stat: "pid (comm) state ppid pgrp ...". comm is the
// process's own choice of up to 15 bytes and may hold spaces and
// parentheses, so it ends at the last ')'.
func parseStat(pid int, stat string) (proc, bool) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return proc{}, false
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 3 {
		return proc{}, false
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return proc{}, false
	}
	pgrp, err := strconv.Atoi(f[2])
	if err != nil {
		return proc{}, false
	}
	return proc{pid: pid, ppid: ppid, pgrp: pgrp}, true
}
