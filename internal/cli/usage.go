package cli

import (
	"fmt"

	"github.com/spf13/pflag"
)

func usage(fs *pflag.FlagSet) string {
	return fmt.Sprintf(`klock runs a command while it holds a Kubernetes Lease, so that the command
never runs twice at once anywhere in the cluster, like flock(1) for a cluster.

Usage:
  klock [flags] -- command [args...]
  klock status [LOCK]   show who holds and who waits (see klock status --help)
  klock install DEST    copy this binary to DEST (for images without cp)

The arguments after -- reach the command exactly as given. klock waits for the
Lease (watching it, so it starts the moment the Lease is released or expires),
creates the Lease if it does not exist, renews it while the command runs, and
releases it when the command exits, so that the next waiter starts at once.

Examples:
  klock -l nightly-backup -- ./backup.sh --full
  klock -l nightly-backup -w 10s -E 0 -- ./backup.sh     skip if another run holds it
  klock -l migrate -n prod --cleanup-lease -- ./migrate.sh

The command gets these environment variables:
  %-22s name of the Lease
  %-22s namespace of the Lease
  %-22s the holder identity klock used
  %-22s a number that grows with every acquisition of this lease name;
                         hand it to what the lock protects to fence off a
                         holder that lost the lock without noticing

Signals: TERM, INT, HUP, QUIT, USR1 and USR2 are forwarded to every process
of the command, including those it left running in the background and those
that started a session of their own; a HUP or INT ignored when klock started
(nohup, a background job) stays ignored. klock releases the Lease only once
all of them have exited, so a background worker keeps the lock, as with
flock(1). If klock dies, all of them get KILL. As PID 1, klock reaps orphans.

Exit status:
  the command's own   the command ran; 128+N if signal N ended it
  -E (default 1)      the lock was not acquired: --wait elapsed, or --nonblock
  124                 the lock was lost while the command ran; the command got
                      --signal, and KILL after --kill-after if still running,
                      before anybody else could take the lock
  125                 klock failed: bad flags, no cluster, no permission
  126, 127            the command could not be run, or was not found
  128+N               klock got signal N while waiting for the lock

Permissions: the identity klock runs as needs a Role like this one in the
Lease's namespace (delete only with --cleanup-lease):

  apiVersion: rbac.authorization.k8s.io/v1
  kind: Role
  metadata:
    name: klock
  rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "create", "update", "watch", "delete"]

Flags:
%s`, EnvLease, EnvLeaseNamespace, EnvHolderIdentity, EnvFencingToken, fs.FlagUsages())
}
