package main

import (
	"fmt"
	"math"
	"os"
	"strconv"
)

// maxSourceDate is the latest source date an image can carry: a newc cpio
// header and a squashfs superblock hold a time as 32 unsigned bits
// (2106-02-07); a later one would be cut short, not refused, by them.
const maxSourceDate = math.MaxUint32

// errSourceDate says what a source date must look like.
var errSourceDate = fmt.Errorf("want the seconds since 1970-01-01 UTC as decimal digits (as `date +%%s` prints them), at most %d", int64(maxSourceDate))

// parseSourceDate reads a source date the way reproducible-builds.org
// defines SOURCE_DATE_EPOCH: decimal digits only (no sign, space, fraction
// or trailing text: "12abc" is an error, not 12), 0 (1970-01-01) included.
// Every command that stamps its output reads the date through it.
func parseSourceDate(v string) (int64, error) {
	if v == "" {
		return 0, errSourceDate
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, errSourceDate
		}
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n > maxSourceDate {
		return 0, errSourceDate
	}
	return int64(n), nil
}

// envSourceDate is $SOURCE_DATE_EPOCH through parseSourceDate; nil when it
// is unset or empty.
func envSourceDate() (*int64, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return nil, nil
	}
	n, err := parseSourceDate(v)
	if err != nil {
		return nil, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", v, err)
	}
	return &n, nil
}

// sourceDateFlag is a --source-date-epoch flag read by parseSourceDate;
// nil until set.
type sourceDateFlag struct{ v *int64 }

func (f *sourceDateFlag) String() string {
	if f == nil || f.v == nil {
		return ""
	}
	return strconv.FormatInt(*f.v, 10)
}

func (f *sourceDateFlag) Set(s string) error {
	n, err := parseSourceDate(s)
	if err != nil {
		return err
	}
	f.v = &n
	return nil
}

// date is the flag's value, else $SOURCE_DATE_EPOCH, else nil.
func (f *sourceDateFlag) date() (*int64, error) {
	if f.v != nil {
		return f.v, nil
	}
	return envSourceDate()
}
