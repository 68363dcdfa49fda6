package wrap

import (
	"fmt"
	"slices"
	"strings"
)

// maxTypoWarnings bounds the warnings for one object: its annotations are
// its author's, and may be many.
const maxTypoWarnings = 5

// UnknownKeys warns of each klock.io/ annotation klock does not know,
// naming the known key nearest to it: `klock.io/wiat` was surely meant as
// klock.io/wait, whose option would otherwise be lost without a word. It
// warns rather than denies, so that a workload annotated for a newer
// klock is not refused by an older webhook. The key is quoted, and cut
// at 63 characters (the longest name part of a valid key) if longer.
func UnknownKeys(annotations map[string]string) []string {
	var warnings []string
	for _, k := range sortedKeys(annotations) {
		if !strings.HasPrefix(k, AnnotationPrefix) || slices.Contains(knownKeys, k) {
			continue
		}
		if len(warnings) == maxTypoWarnings {
			warnings = append(warnings, "more klock.io/ annotations that klock does not know were left unchecked")
			break
		}
		shown := k
		if len(shown) > len(AnnotationPrefix)+63 {
			shown = shown[:len(AnnotationPrefix)+63] + "..."
		}
		if near := nearest(k); near != "" {
			warnings = append(warnings, fmt.Sprintf("annotation %q is not one klock knows, and is ignored: did you mean %s?", shown, near))
		} else {
			warnings = append(warnings, fmt.Sprintf("annotation %q is not one klock knows, and is ignored: klock reads %s", shown, strings.Join(userKeys, ", ")))
		}
	}
	return warnings
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// nearest is the known key closest to key by edit distance, if it is close
// enough to be a typo of it: at most a third of the name apart.
func nearest(key string) string {
	name := strings.TrimPrefix(key, AnnotationPrefix)
	if len(name) > 64 {
		return ""
	}
	best, bestDistance := "", len(name)/3+1
	for _, k := range knownKeys {
		if d := distance(name, strings.TrimPrefix(k, AnnotationPrefix)); d < bestDistance {
			best, bestDistance = k, d
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b, counting a swap of
// two neighbours as one edit (optimal string alignment), as typing errors
// go.
func distance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
