package images

import (
	"errors"
	"io"
	"strings"
	"testing"
)

func TestLimitedBody(t *testing.T) {
	const limit = 10
	tooLarge := &TooLargeError{What: "manifest or config", StatusCode: 200, Limit: limit}
	for _, tc := range []struct {
		name string
		size int
		fail bool
	}{
		{name: "a body under the cap is read whole", size: limit - 1},
		{name: "a body of exactly the cap is read whole", size: limit},
		{name: "a body one byte over the cap fails", size: limit + 1, fail: true},
		{name: "a body far over the cap fails", size: 100 * limit, fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := &limitedBody{body: io.NopCloser(strings.NewReader(strings.Repeat("x", tc.size))), left: limit, err: tooLarge}
			got, err := io.ReadAll(body)
			if tc.fail {
				if !errors.Is(err, tooLarge) {
					t.Fatalf("error %v, want %v", err, tooLarge)
				}
				if len(got) > limit {
					t.Errorf("read %d bytes, want at most %d", len(got), limit)
				}
				if _, err := body.Read(make([]byte, 1)); !errors.Is(err, tooLarge) {
					t.Errorf("a read after the failure: error %v, want %v", err, tooLarge)
				}
				return
			}
			if err != nil || len(got) != tc.size {
				t.Errorf("read %d bytes, error %v; want %d bytes", len(got), err, tc.size)
			}
		})
	}
	if got, want := tooLarge.Error(), "the registry's manifest or config (HTTP 200) is over the 10 bytes limit"; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
}
