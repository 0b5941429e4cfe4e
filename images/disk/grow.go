package disk

import (
	"errors"
	"fmt"
)

// ErrTooSmall is returned (wrapped) by Grow for a disk that cannot hold
// the layout.
var ErrTooSmall = errors.New("disk too small")

// gptTail is what the backup GPT takes at a disk's end: its header and its
// 128 entries (33 sectors), kept out of every partition.
const gptTail = 33 * sector

// MinSize is the smallest disk Grow lays l out on: its partitions before
// the data partition, a data partition of MinDataSize, and the backup GPT.
func MinSize(l *Layout) int64 {
	end := int64(mib)
	for _, p := range l.Partitions {
		if p.Name != DataName {
			end = max(end, p.Offset+p.Size)
		}
	}
	return end + MinDataSize + gptTail
}

// Grow lays l out on a disk of size bytes, as an installer writes it: the
// partitions where l has them, and the data partition (belldata, added
// when l has none) from where the others end up to the last MiB boundary
// before the backup GPT, which goes to the disk's last 33 sectors. The
// layout returned has no GUIDs (WriteGPT needs them).
func Grow(l *Layout, size int64) (*Layout, error) {
	if size < MinSize(l) {
		return nil, fmt.Errorf("%w: %d bytes (%d MiB), the image needs at least %d bytes (%d MiB)",
			ErrTooSmall, size, size/mib, MinSize(l), (MinSize(l)+mib-1)/mib)
	}
	out := &Layout{Size: size}
	end := int64(mib)
	for _, p := range l.Partitions {
		if p.Name == DataName {
			continue
		}
		p.GUID = ""
		out.Partitions = append(out.Partitions, p)
		end = max(end, p.Offset+p.Size)
	}
	dataEnd := (size - gptTail) &^ (mib - 1)
	out.Partitions = append(out.Partitions, Partition{
		Index: len(out.Partitions) + 1, Name: DataName, Offset: end, Size: dataEnd - end, Extent: emptyHash,
	})
	return out, nil
}
