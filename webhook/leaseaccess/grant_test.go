package leaseaccess

import (
	"strings"
	"testing"

	"github.com/klock-io/klock/webhook/policy"
)

func TestAccessName(t *testing.T) {
	if got := accessName(policy.Workload{Kind: "CronJob", Name: "backup"}); got != "klock-lease-cronjob-backup" {
		t.Errorf("accessName = %q", got)
	}
	long := accessName(policy.Workload{Kind: "Deployment", Name: strings.Repeat("a", 253)})
	if len(long) != 253 || long == accessName(policy.Workload{Kind: "Deployment", Name: strings.Repeat("a", 252)}) {
		t.Errorf("long names must be shortened to 253 and stay distinct: %q", long)
	}
}
