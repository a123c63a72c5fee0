# fingerprintd plugin for SpamAssassin: asks a running fingerprintd about the
# host that connected to your MX, for setups without fingerprintd's milter or
# policy service. It speaks the p0f-analyzer UDP protocol (fingerprintd serve
# --analyzer-udp 127.0.0.1:2345) with core Perl modules only, keeps to a short
# time budget, works in taint mode, and its eval rules always return 0 or 1.
#
#   loadplugin Mail::SpamAssassin::Plugin::FingerprintD FingerprintD.pm
#   fingerprintd_server  127.0.0.1:2345     # default
#   fingerprintd_timeout 0.05               # seconds, default 0.05
#
#   header FPD_P_WINDOWS eval:fingerprintd_os('Windows')
#   header FPD_P_UNKNOWN eval:fingerprintd_unknown()
#   header FPD_P_NEAR    eval:fingerprintd_dist_below(9)
#
#   header FPD_SA_1_5    eval:fingerprintd_score_band(1.5, 2)   # fingerprintd's score, 1.5 <= S < 2
#   header FPD_SA_NEG    eval:fingerprintd_score_at_most(-0.3)
#   header FPD_SA_XP     eval:fingerprintd_rule('windows-xp')   # a policy rule that fired
#
# fingerprintd-plugin.cf has the score-band rules ready (the same bands and
# points as fingerprintd.cf's header rules: use one file or the other).
#
# The client is the first external relay (the host that connected to your
# trusted MTAs; with internal_networks = trusted_networks, the usual setup,
# the first untrusted relay); the lookup is by address, for its latest SYN.
#
# The query carries what the MTA recorded for that relay, so that the score
# is fingerprintd's context-aware verdict (the p0f-analyzer protocol with
# fingerprintd's "fpd1" extension; amavisd-new never sends it):
#
#  [203.0.113.45] 1a2b3c4d fpd1 rdns=dsl-45.dyn.example.net helo=DESKTOP-4F7K2LQ
#  -> [203.0.113.45] 1a2b3c4d Windows 10 or 11; dist: 12; ...; raw_sig: ...;
#  class: desktop; rules: desktop-dynamic-rdns,client-helo-bare; id: ...; score: 2\r\n
#
# It sends the relay's rdns (rdns= when the MTA recorded none) and HELO, each
# left out when SpamAssassin does not know it; the reply is the analyzer
# result, then the verdict with the score last. The exact fields, their
# mapping onto fingerprintd's context and the unknown cases: the POD at the
# end of this file (perldoc FingerprintD.pm).

package Mail::SpamAssassin::Plugin::FingerprintD;

use strict;
use warnings;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes ();
use Mail::SpamAssassin::Plugin;
use Mail::SpamAssassin::Logger;

our @ISA = qw(Mail::SpamAssassin::Plugin);

sub new {
  my ($class, $mailsa) = @_;
  my $self = $class->SUPER::new($mailsa);
  bless($self, $class);
  my $head = $Mail::SpamAssassin::Conf::TYPE_HEAD_EVALS;
  $self->register_eval_rule('fingerprintd_os', $head);
  $self->register_eval_rule('fingerprintd_unknown', $head);
  $self->register_eval_rule('fingerprintd_dist_below', $head);
  $self->register_eval_rule('fingerprintd_score_band', $head);
  $self->register_eval_rule('fingerprintd_score_at_most', $head);
  $self->register_eval_rule('fingerprintd_rule', $head);
  $self->set_config($mailsa->{conf});
  return $self;
}

sub set_config {
  my ($self, $conf) = @_;
  push(@{$conf->{registered_commands}}, {
    setting => 'fingerprintd_server',
    default => '127.0.0.1:2345',
    type => $Mail::SpamAssassin::Conf::CONF_TYPE_STRING,
  }, {
    setting => 'fingerprintd_timeout',
    default => 0.05,
    type => $Mail::SpamAssassin::Conf::CONF_TYPE_NUMERIC,
  }, {
    setting => 'fingerprintd_feedback',  # 1: report SpamAssassin's verdict back (serve --reputation)
    default => 0,
    type => $Mail::SpamAssassin::Conf::CONF_TYPE_BOOL,
  });
  $conf->{parser}->register_commands($conf->{registered_commands});
}

# The analyzer's answer for this message's client: "" when unknown or on any
# failure (the rules then simply do not fire).
sub _result {
  my ($self, $pms) = @_;
  return $pms->{fingerprintd_result} if defined $pms->{fingerprintd_result};
  $pms->{fingerprintd_result} = '';
  my $relay = $pms->{relays_external} && $pms->{relays_external}->[0];
  return '' unless $relay && defined $relay->{ip};
  my ($ip) = ($relay->{ip} =~ /\A([0-9A-Fa-f.:]+)\z/);  # untaint: an address, nothing else
  return '' unless defined $ip;
  my $conf = $pms->{conf};
  my ($host, $port) = ($conf->{fingerprintd_server} =~ /\A\[?([^\]]+?)\]?:(\d+)\z/);
  return '' unless defined $port;
  my $budget = $conf->{fingerprintd_timeout};
  my $query = "[$ip]";
  my $nonce = sprintf('%08x', int(rand(0x7fffffff)));
  my $ext = 'fpd1' . _names($relay);
  my $sock = IO::Socket::INET->new(Proto => 'udp', PeerAddr => $host, PeerPort => $port);
  unless ($sock) {
    dbg("fingerprintd: cannot reach $host:$port: $!");
    return '';
  }
  my $t0 = Time::HiRes::time();
  unless ($sock->send("$query $nonce $ext")) {
    dbg("fingerprintd: send failed: $!");
    return '';
  }
  my $sel = IO::Select->new($sock);
  my $reply = '';
  while (1) {
    my $left = $budget - (Time::HiRes::time() - $t0);
    last if $left <= 0 || !$sel->can_read($left);
    my $buf;
    last unless defined $sock->recv($buf, 2048);
    if ($buf =~ /\A(\S+) (\S*) ([^\r\n]*)\r\n\z/ && $1 eq $query && $2 eq $nonce) {
      ($reply) = ($3 =~ /\A([\x20-\x7e]*)\z/);  # untaint: printable text only
      $reply = '' unless defined $reply;
      # A fingerprintd without the extension echoes it as part of the nonce.
      $reply = substr($reply, length($ext) + 1) if index($reply, "$ext ") == 0;
      $reply = '' if $reply eq $ext;
      last;
    }
  }
  $sock->close();
  dbg("fingerprintd: $query -> '$reply'");
  $pms->set_tag('FINGERPRINTD', $reply) if $reply ne '';
  return $pms->{fingerprintd_result} = $reply;
}

# " rdns=... helo=..." for the relay, each only when known and clean (see the
# top of this file); the values are untainted by the patterns themselves.
sub _names {
  my ($relay) = @_;
  my $out = '';
  my $rdns = $relay->{rdns};
  if (defined $rdns && $rdns ne '') {
    my ($clean) = ($rdns =~ /\A([\x21-\x7e]{1,255})\z/);
    $out .= " rdns=$clean" if defined $clean;
  } elsif ($relay->{no_reverse_dns}) {
    $out .= ' rdns=';
  }
  my $helo = $relay->{helo};
  if (defined $helo && $helo ne '') {
    $helo = "[$1]" if $helo =~ /\A!((?:IPv6:)?[0-9A-Fa-f.:]+)!\z/i;  # SpamAssassin's !addr! literal
    my ($clean) = ($helo =~ /\A([\x21-\x7e]{1,255})\z/);
    $out .= " helo=$clean" if defined $clean;
  }
  return $out;
}

# fingerprintd's score for the client, undef when there is none (unknown
# client, an older fingerprintd, a failure).
sub _score {
  my ($self, $pms) = @_;
  my $reply = $self->_result($pms);
  return ($reply =~ /; score: (-?\d+(?:\.\d+)?)\z/) ? $1 + 0 : undef;
}

# fingerprintd.cf's header rules score the same verdict when a milter or the
# policy service adds the header: with both files loaded, the header rules
# count and these stay silent, so a message is never scored twice.
sub _header_rules_loaded {
  my ($pms) = @_;
  my $scores = $pms->{conf}->{scores};
  return ($scores && $scores->{FPD_SCORE_1}) ? 1 : 0;
}

sub fingerprintd_score_band {
  my ($self, $pms, $lo, $hi) = @_;
  return 0 unless defined $lo && $lo =~ /\A-?\d+(?:\.\d+)?\z/;
  return 0 if defined $hi && $hi !~ /\A-?\d+(?:\.\d+)?\z/;
  return 0 if _header_rules_loaded($pms);
  my $s = $self->_score($pms);
  return 0 unless defined $s;
  return ($s >= $lo && (!defined $hi || $s < $hi)) ? 1 : 0;
}

sub fingerprintd_score_at_most {
  my ($self, $pms, $max) = @_;
  return 0 unless defined $max && $max =~ /\A-?\d+(?:\.\d+)?\z/;
  return 0 if _header_rules_loaded($pms);
  my $s = $self->_score($pms);
  return (defined $s && $s <= $max) ? 1 : 0;
}

sub fingerprintd_rule {
  my ($self, $pms, $want) = @_;
  return 0 unless defined $want && $want ne '';
  my $reply = $self->_result($pms);
  return 0 unless $reply =~ /; rules: ([^;]*);/;
  return (grep { $_ eq $want } split(/,/, $1)) ? 1 : 0;
}

# fingerprintd_feedback 1: after SpamAssassin's verdict, report spam or ham
# for the served id ("fpd1-feedback NONCE spam|ham ID CLIENT [MESSAGE-ID]"),
# one datagram, the reply awaited within fingerprintd_timeout (for the log).
sub check_end {
  my ($self, $opts) = @_;
  my $pms = $opts->{permsgstatus};
  my $conf = $pms->{conf};
  return unless $conf->{fingerprintd_feedback};
  my $reply = $pms->{fingerprintd_result};
  return unless defined $reply && $reply =~ /; id: ([0-9a-f]{10}\/[a-z]+\/[a-z?-]{1,40});/;
  my $key = $1;
  my $relay = $pms->{relays_external} && $pms->{relays_external}->[0];
  return unless $relay && defined $relay->{ip};
  my ($ip) = ($relay->{ip} =~ /\A([0-9A-Fa-f.:]{2,45})\z/);
  return unless defined $ip;
  my $msgid = $pms->get('Message-Id', '');
  $msgid = '' unless defined $msgid;
  ($msgid) = ($msgid =~ /\A\s*([\x21-\x7e]{1,998})/);  # untaint: its first word, printable
  my ($host, $port) = ($conf->{fingerprintd_server} =~ /\A\[?([^\]]+?)\]?:(\d+)\z/);
  return unless defined $port;
  my $nonce = sprintf('%08x', int(rand(0x7fffffff)));
  my $verdict = $pms->is_spam() ? 'spam' : 'ham';
  my $sock = IO::Socket::INET->new(Proto => 'udp', PeerAddr => $host, PeerPort => $port) or return;
  my $msg = "fpd1-feedback $nonce $verdict $key $ip" . (defined $msgid ? " $msgid" : '');
  if ($sock->send($msg)) {
    my $buf;
    if (IO::Select->new($sock)->can_read($conf->{fingerprintd_timeout}) && defined $sock->recv($buf, 512)) {
      dbg("fingerprintd: feedback $verdict $key -> $buf");
    }
  }
  $sock->close();
  return;
}

sub fingerprintd_os {
  my ($self, $pms, $want) = @_;
  return 0 unless defined $want && $want ne '';
  my $os = $self->_result($pms);
  return (index($os, $want) == 0) ? 1 : 0;
}

sub fingerprintd_unknown {
  my ($self, $pms) = @_;
  my $os = $self->_result($pms);
  return ($os =~ /\A\?\?\?/) ? 1 : 0;
}

sub fingerprintd_dist_below {
  my ($self, $pms, $max) = @_;
  return 0 unless defined $max && $max =~ /\A\d+\z/;
  my $os = $self->_result($pms);
  return ($os =~ /; dist: (\d+)(?:;|\z)/ && $1 < $max) ? 1 : 0;
}

1;

__END__

=head1 NAME

Mail::SpamAssassin::Plugin::FingerprintD - fingerprintd's verdict for the connecting host

=head1 SYNOPSIS

  loadplugin Mail::SpamAssassin::Plugin::FingerprintD FingerprintD.pm
  fingerprintd_server  127.0.0.1:2345
  fingerprintd_timeout 0.05
  include fingerprintd-plugin.cf     # FPD_SA_NEG, FPD_SA_0_5 ... FPD_SA_3

=head1 DESCRIPTION

Asks a running C<fingerprintd serve --analyzer-udp 127.0.0.1:2345> about the
first external relay (with internal_networks = trusted_networks, the first
untrusted relay) and passes what the MTA recorded for it, so that the score
is fingerprintd's policy verdict with the MTA's names. Core Perl modules
only, taint-clean, one datagram within C<fingerprintd_timeout>; on any
failure the rules do not fire.

=head1 PROTOCOL

The p0f-analyzer datagram with fingerprintd's C<fpd1> extension (amavisd-new
never sends it: its nonce is one word):

  [ADDR] NONCE fpd1 [rdns=NAME] [helo=NAME]
  -> [ADDR] NONCE RESULT; class: C; rules: R1,R2; [learned: +L; ]id: K; score: S\r\n

RESULT is the usual analyzer form (C<OS; dist: N; link: ...; params: ...;
raw_mtu: ...; raw_sig: ...>); the score comes last, as in the
X-OS-Fingerprint header; trusted networks get C<rules: trusted_network;
score: 0> without an id. An unknown client gets an empty RESULT and no
verdict. The fields, from SpamAssassin's relay (X-Spam-Relays-Untrusted):

=over

=item rdns=NAME

the relay's C<rdns>: the name the MTA recorded. fingerprintd takes it as the
verified name and the PTR (Postfix and Exim record only a forward-confirmed
name; sendmail's "(may be forged)" does not survive SpamAssassin's parser,
so such a name counts as verified too).

=item rdns= (empty)

the MTA looked the name up and recorded none (Postfix's C<unknown>;
SpamAssassin's C<no_reverse_dns>): no verified name; whether a PTR exists is
not known. Left out when the header does not say (C<rdns_not_in_headers>).

=item helo=NAME

the relay's C<helo> (C<[ADDR]> for an address literal, which SpamAssassin
writes C<!ADDR!>); left out when there is none.

=back

A value that is not printable ASCII without spaces, or is over 255 bytes, is
left out (not known). An older fingerprintd echoes the extension as part of
the nonce; the plugin understands that reply, without a score.

=head1 FEEDBACK

With C<fingerprintd_feedback 1> (and C<fingerprintd serve --reputation PATH>)
the plugin reports SpamAssassin's final verdict for the id it was served:

  fpd1-feedback NONCE spam|ham ID CLIENT [MESSAGE-ID]
  -> fpd1-feedback NONCE counted\r\n

recorded as gRPC's Feedback records it: one message and one client count
once per id, one source network up to the store's cap; the other answers
are duplicate-message, duplicate-client, source-cap and invalid. Only the
analyzer's allowed networks (C<--analyzer-allow>) are heard. Note that
SpamAssassin's verdict includes fingerprintd's own points: keep them small.

=head1 EVAL RULES

  fingerprintd_score_band(LO[, HI])  LO <= score < HI (no HI: no upper bound)
  fingerprintd_score_at_most(MAX)    score <= MAX
  fingerprintd_rule(NAME)            the policy rule NAME fired
  fingerprintd_os(PREFIX)            the OS string starts with PREFIX
  fingerprintd_unknown()             no signature matched
  fingerprintd_dist_below(N)         fewer than N hops away

fingerprintd-plugin.cf scores the bands as fingerprintd.cf scores the
header. Use one of them: fingerprintd.cf where the milter or the policy
service adds the header, fingerprintd-plugin.cf otherwise. With both loaded
the score evals return 0 (the plugin sees FPD_SCORE_1 scored), so nothing
counts twice.

=cut
