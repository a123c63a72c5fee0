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
# The client is the first external relay (the host that connected to your
# trusted MTAs); the lookup is by address, for its latest SYN.

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
  my $sock = IO::Socket::INET->new(Proto => 'udp', PeerAddr => $host, PeerPort => $port);
  unless ($sock) {
    dbg("fingerprintd: cannot reach $host:$port: $!");
    return '';
  }
  my $t0 = Time::HiRes::time();
  unless ($sock->send("$query $nonce")) {
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
      last;
    }
  }
  $sock->close();
  dbg("fingerprintd: $query -> '$reply'");
  $pms->set_tag('FINGERPRINTD', $reply) if $reply ne '';
  return $pms->{fingerprintd_result} = $reply;
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
