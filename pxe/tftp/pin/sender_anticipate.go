package tftp

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
)

// the struct embedded into sender{} as sendA
type senderAnticipate struct {
	enabled   bool
	winsz     uint     /* init windows size in number of buffers */
	num       uint     /* actual packets to send. */
	acked     uint     /* packets of the window the peer has acknowledged (bellbuild patch) */
	early     bool     /* the window was resent early on a duplicate ACK (bellbuild patch) */
	lost      bool     /* part of the window was resent (bellbuild patch) */
	cwnd      uint     /* packets in the next window, at most len(sends) (bellbuild patch) */
	ceil      uint     /* largest window without a loss since the last one (bellbuild patch) */
	clean     uint     /* windows without a loss at the ceiling (bellbuild patch) */
	probe     uint     /* clean windows at the ceiling before trying one more (bellbuild patch) */
	limit     uint     /* the handler's window for this transfer, 0: the server's (bellbuild patch) */
	sends     [][]byte /* buffers for a number of packets */
	sendslens []uint   /* data lens in buffers */
}

const anticipateWindowDefMax = 60 /* 60 by 512 is about 30k */
const anticipateDebug bool = false

func sendAInit(sA *senderAnticipate, ln uint, winSz uint) {
	var ksz uint
	if winSz > anticipateWindowDefMax {
		ksz = anticipateWindowDefMax
	} else if winSz < 2 {
		ksz = 2
	} else {
		ksz = winSz
	}
	sA.sends = make([][]byte, ksz)
	sA.sendslens = make([]uint, ksz)
	for k := uint(0); k < ksz; k++ {
		sA.sends[k] = make([]byte, ln)
		sA.sendslens[k] = 0
	}
	sA.winsz = ksz
	//fmt.Printf("  Set packet buffer size %v\n", ln)
}

// start sets up the window of a transfer and returns its largest size:
// the server's, or the handler's SetWindow when smaller (bellbuild patch).
//
// The window adapts to what the peer takes (adapt). After a window that
// needed a resend it halves, and one less than the window that lost
// becomes its ceiling; below the ceiling it grows by one per clean window;
// at the ceiling it tries one more after probe clean windows, and a try
// that loses doubles probe (up to 1024), so a peer that drops bursts (a
// small receive ring) costs a few losses, not one per window; a loss below
// the ceiling (noise) resets probe to 8.
func (sA *senderAnticipate) start() uint {
	ksz := uint(len(sA.sends))
	if sA.limit > 0 && sA.limit < ksz {
		ksz = sA.limit
	}
	sA.cwnd, sA.ceil, sA.probe, sA.clean = ksz, ksz, 8, 0
	return ksz
}

// adapt sets the next window's size from how the last one went, at most
// max (bellbuild patch; see start).
func (sA *senderAnticipate) adapt(max uint) {
	c := sA.cwnd
	switch {
	case sA.lost:
		if c > sA.ceil {
			if sA.probe < 1024 {
				sA.probe *= 2
			}
		} else {
			sA.probe = 8
		}
		sA.ceil, sA.cwnd, sA.clean = c-1, c/2, 0
		if sA.ceil == 0 {
			sA.ceil = 1
		}
		if sA.cwnd == 0 {
			sA.cwnd = 1
		}
	case c > sA.ceil:
		sA.ceil = c // a try above the ceiling went through
	case c < sA.ceil:
		sA.cwnd++
	case c < max:
		if sA.clean++; sA.clean >= sA.probe {
			sA.cwnd, sA.clean = c+1, 0
		}
	}
}

// SetWindow sets how many packets this transfer sends ahead, at most the
// server's SetAnticipate window; 1 sends in lock-step (bellbuild patch).
// Call it before ReadFrom.
func (s *sender) SetWindow(n uint) {
	if n <= 1 {
		s.sendA.enabled = false
		return
	}
	s.sendA.limit = n
}

// derived from ReadFrom()
func readFromAnticipate(s *sender, r io.Reader) (n int64, err error) {
	s.block = 1 // start data transmission with block 1
	ksz := uint(len(s.sendA.sends))
	for k := uint(0); k < ksz; k++ {
		binary.BigEndian.PutUint16(s.sendA.sends[k][0:2], opDATA)
		s.sendA.sendslens[k] = 0
	}
	s.sendA.num = 0
	ksz = s.sendA.start()
	for {
		nx := int64(0)
		knum := uint(0)
		kfillOk := true /* default ok */
		kfillPartial := false
		var rerr error
		for k := uint(0); k < s.sendA.cwnd; k++ {
			lx, err := io.ReadFull(r, s.sendA.sends[k][4:])
			nx += int64(lx)
			if err != nil && err != io.ErrUnexpectedEOF {
				if err == io.EOF {
					if kfillPartial {
						break /* short packet already sent in last loop */
					}
					binary.BigEndian.PutUint16(s.sendA.sends[k][2:4],
						s.block+uint16(k))
					s.sendA.sendslens[k] = 4
					knum = k + 1
					kfillPartial = true
					break
				}
				kfillOk = false
				// bellbuild patch: upstream aborted with a nil error (a panic).
				rerr = err
				break /* fail */
			} else if err != nil /* has to be io.ErrUnexpectedEOF now */ {
				kfillPartial = true /* set the flag and send the packet */
			}
			binary.BigEndian.PutUint16(s.sendA.sends[k][2:4],
				s.block+uint16(k))
			s.sendA.sendslens[k] = uint(4 + lx)
			knum = k + 1
		}
		if !kfillOk {
			s.abort(rerr)
			return n, rerr
		}
		s.sendA.num = knum
		n += int64(nx)
		if anticipateDebug {
			fmt.Printf(" **** sends s.block %v pkts %v  ", s.block, knum)
			for k := uint(0); k < ksz; k++ {
				fmt.Printf(" %v ", s.sendA.sendslens[k])
			}
			fmt.Println("")
		}
		s.sendA.acked = 0
		s.sendA.early = false
		s.sendA.lost = false
		_, err = s.sendWithRetryAnticipate()
		if err != nil {
			s.abort(err)
			return n, err
		}
		s.sendA.adapt(ksz)
		if kfillPartial {
			s.conn.close()
			return n, nil
		}
		s.block += uint16(knum)
	}
}

// derived from sendWithRetry()
func (s *sender) sendWithRetryAnticipate() (*net.UDPAddr, error) {
	s.retry.reset()
	for {
		addr, err := s.sendDatagramAnticipate()
		if _, ok := err.(net.Error); ok && s.retry.count() < s.retries {
			s.sendA.lost = true
			s.retry.backoff()
			continue
		}
		return addr, err
	}
}

// derived from sendDatagram()
//
// bellbuild patch: the upstream loop restarted its count of acknowledged
// packets at the window's first block on every retry and counted only an
// ACK of exactly the next block, so after one lost DATA or ACK it waited
// for ACKs of blocks the peer already had, and a lock-step peer (which
// acknowledges only its latest block) never sent them: the transfer failed.
// Here the count survives retries, a retry resends only the unacknowledged
// packets, an ACK acknowledges every block up to its own (peers ACK in
// order), and a duplicate ACK of the last acknowledged block (the peer's
// own retransmission: it is waiting for the next one) resends the rest of
// the window at once, once per window and retry, instead of waiting for
// the timeout.
func (s *sender) sendDatagramAnticipate() (*net.UDPAddr, error) {
	err1 := s.conn.setDeadline(s.timeout)
	if err1 != nil {
		return nil, err1
	}
	ksz := uint(len(s.sendA.sends))
	knum := s.sendA.num
	if knum > ksz {
		return nil, fmt.Errorf("knum %v bigger than ksz %v", knum, ksz)
	}
	k := s.sendA.acked
	if err := s.sendWindowFrom(k, knum); err != nil {
		return nil, err
	}
	for {
		n, addr, err := s.conn.readFrom(s.receive)
		if err != nil {
			return nil, err
		}
		if !addr.IP.Equal(s.addr.IP) || (s.tid != 0 && addr.Port != s.tid) {
			continue
		}
		p, err := parsePacket(s.receive[:n])
		if err != nil {
			continue
		}
		s.tid = addr.Port
		switch p := p.(type) {
		case pACK:
			if anticipateDebug {
				fmt.Printf(" **** pACK p.block %v  s.block %v k %v\n",
					p.block(), s.block, k)
			}
			// Offset of the acknowledged block in the window (block
			// numbers wrap at 16 bits, and so does this difference).
			off := uint(p.block() - s.block)
			switch {
			case off < knum && off >= k:
				s.datagramsAcked += int(off + 1 - k)
				k = off + 1
				s.sendA.acked = k
				if k == knum {
					return addr, nil
				}
			case p.block() == s.block+uint16(k)-1 && !s.sendA.early:
				s.sendA.early = true
				s.sendA.lost = true
				if err := s.conn.setDeadline(s.timeout); err != nil {
					return nil, err
				}
				if err := s.sendWindowFrom(k, knum); err != nil {
					return nil, err
				}
			}
		case pOACK:
			opts, err := unpackOACK(p)
			if s.block != 0 {
				continue
			}
			if err != nil {
				s.abort(err)
				return addr, err
			}
			for name, value := range opts {
				if name == "blksize" {
					err := s.setBlockSize(value)
					if err != nil {
						continue
					}
				}
			}
			return addr, nil
		case pERROR:
			return nil, fmt.Errorf("sending block %d: code=%d, error: %s",
				s.block, p.code(), p.message())
		}
	}
}

// sendWindowFrom sends the window's packets from..knum-1 (bellbuild patch).
func (s *sender) sendWindowFrom(from, knum uint) error {
	for k := from; k < knum; k++ {
		lx := s.sendA.sendslens[k]
		if lx < 4 {
			return fmt.Errorf("lx smaller than 4")
		}
		if err := s.conn.sendTo(s.sendA.sends[k][:lx], s.addr); err != nil {
			return fmt.Errorf("k %v errx %v", k, err.Error())
		}
		s.datagramsSent++
	}
	return nil
}
