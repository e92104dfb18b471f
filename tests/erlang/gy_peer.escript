#!/usr/bin/env escript
%% A Gy client (a PGW/IMS node stand-in) built on OTP's diameter application, for
%% tests/test_diameter_erlang.py: OTP's own peer state machine does CER/CEA, DWR/DWA and
%% DPR/DPA, its codec encodes and strictly decodes every message with the RFC 4006
%% dictionary in gy.dia (compiled here at run time). It is also the server side of the
%% requests our door sends it: it answers RAR with RAA and ASR with ASA.
%%
%% Usage: escript gy_peer.escript PORT DICT MSISDN LOW_MSISDN [tls CERT KEY CA]
%% It prints one line per step ("KEY VALUE...") on stdout, and at "WAIT topup" and
%% "WAIT bar" waits for any line on stdin (the test has done it) before it goes on.
%% Any failure exits non-zero with the reason on stdout.
-module(gy_peer).
-mode(compile).
-export([main/1, peer_up/3, peer_down/3, pick_peer/4, prepare_request/3, prepare_retransmit/3,
         handle_answer/4, handle_error/4, handle_request/3, watchdog/0]).

-define(SVC, gy_peer).
-define(HOST, "pgw.erlang.test").
-define(REALM, "erlang.test").
-define(DATA, "32251@3gpp.org").
-define(SMS, "32274@3gpp.org").
-define(E164, 0).

main([Port, Dict, Msisdn, Low | Tls]) ->
    try run(list_to_integer(Port), Dict, Msisdn, Low, Tls) of
        ok -> out("DONE", []), halt(0)
    catch
        Class:Reason:Stack ->
            out("FAILED", [string:replace(lists:flatten(io_lib:format("~p:~p ~p", [Class, Reason, Stack])), "\n", " ", all)]),
            halt(1)
    end.

run(Port, DictFile, Msisdn, Low, Tls) ->
    register(gy_main, self()),
    {ok, [Forms | _]} = diameter_make:codec(DictFile, [return, forms]),
    {ok, Dict, Bin} = compile:forms(Forms, [return_errors, binary]),
    {module, Dict} = code:load_binary(Dict, "gy.dia", Bin),
    ok = ssl:start(),
    ok = diameter:start(),
    ok = diameter:start_service(?SVC, [
        {'Origin-Host', ?HOST}, {'Origin-Realm', ?REALM},
        {'Vendor-Id', 0}, {'Product-Name', "OTP diameter gy_peer"},
        {'Origin-State-Id', 7}, {'Supported-Vendor-Id', [10415]},
        {'Auth-Application-Id', [4]},
        {decode_format, map}, {string_decode, false},
        {application, [{alias, gy}, {dictionary, Dict}, {module, ?MODULE},
                       {answer_errors, callback}, {request_errors, callback}]}]),
    true = diameter:subscribe(?SVC),
    {ok, Ref} = diameter:add_transport(?SVC, {connect, transport(Port, Tls)}),
    receive
        {diameter_event, ?SVC, {up, Ref, _Peer, _Caps, Cea}} ->
            ['CEA' | Caps] = msg(Cea),
            out("CEA", [maps:get('Result-Code', Caps), maps:get('Origin-Host', Caps)]);
        {diameter_event, ?SVC, {closed, Ref, Why, _}} ->
            error({closed, Why})
    after 10000 -> error(no_cea)
    end,
    session(Msisdn),
    event(Msisdn),
    reauthorized(Low),
    watchdog_answered(),
    ok = diameter:remove_transport(?SVC, Ref),  % DPR, waits for the DPA
    receive
        {diameter_event, ?SVC, {down, Ref, _, _}} -> out("DPA", [])
    after 10000 -> error(no_down)
    end,
    ok.

transport(Port, []) ->
    [{transport_module, diameter_tcp},
     {transport_config, [{raddr, {127, 0, 0, 1}}, {rport, Port}, {ip, {127, 0, 0, 1}}]},
     {watchdog_timer, {?MODULE, watchdog, []}}];
transport(Port, ["tls", Cert, Key, Ca]) ->
    %% TLS after CER (RFC 6733 inband security): Inband-Security-Id TLS in our CER.
    [{transport_module, diameter_tcp},
     {transport_config, [{raddr, {127, 0, 0, 1}}, {rport, Port}, {ip, {127, 0, 0, 1}},
                         {ssl_options, [{certfile, Cert}, {keyfile, Key}, {cacertfile, Ca},
                                        {verify, verify_peer},
                                        {server_name_indication, "localhost"}]}]},
     {capabilities, [{'Inband-Security-Id', [1]}]},
     {watchdog_timer, {?MODULE, watchdog, []}}].

%% Tw: 300 ms instead of RFC 3539's 30 s minimum (an MFA is not checked), so that a DWR
%% goes out as soon as the exchanges above are over.
watchdog() -> 300.

%% A data and voice session: two MSCCs, CCR-I/U/T.
session(Msisdn) ->
    Sid = diameter:session_id(?HOST),
    I = call(ccr(Sid, ?DATA, 1, 0, Msisdn, [], [
        mscc(30, [{'CC-Total-Octets', 1000000}], []),
        mscc(10, [{'CC-Time', 120}], [])])),
    out("CCA-I", [code(I) | grants(I)]),
    U = call(ccr(Sid, ?DATA, 2, 1, Msisdn, [], [
        mscc(30, [{'CC-Total-Octets', 1000000}], [{'CC-Total-Octets', 512000}])])),
    out("CCA-U", [code(U) | grants(U)]),
    T = call(ccr(Sid, ?DATA, 3, 2, Msisdn, [{'Termination-Cause', 1}], [
        mscc(30, [], [{'CC-Total-Octets', 512000}]),
        mscc(10, [], [{'CC-Time', 61}])])),
    out("CCA-T", [code(T)]).

%% An SMS charged as an event: direct debiting of one unit.
event(Msisdn) ->
    Sid = diameter:session_id(?HOST),
    E = call(ccr(Sid, ?SMS, 4, 0, Msisdn, [{'Requested-Action', 0}], [
        mscc(20, [{'CC-Service-Specific-Units', 1}], [])])),
    out("CCA-E", [code(E) | grants(E)]).

%% A line that runs out: final unit with a redirect, then the test tops it up, our door
%% sends a RAR, we answer it and re-authorize (CCR-U), and get a full grant; then the test
%% bars the line and the door sends an ASR, which we answer.
reauthorized(Low) ->
    Sid = list_to_binary(diameter:session_id(?HOST)),  % as it comes back in the RAR
    I = call(ccr(Sid, ?DATA, 1, 0, Low, [], [mscc(30, [{'CC-Total-Octets', 1000000}], [])])),
    [Mscc] = maps:get('Multiple-Services-Credit-Control', body(I)),
    [Fui] = maps:get('Final-Unit-Indication', Mscc),
    out("CCA-I-LOW", [code(I) | grants(I)] ++ [fui, maps:get('Final-Unit-Action', Fui)]),
    out("WAIT", [topup]),
    await_line(),
    receive {server_request, 'RAR', Sid, Type} -> out("RAR", [Type]) after 10000 -> error(no_rar) end,
    U = call(ccr(Sid, ?DATA, 2, 1, Low, [], [
        mscc(30, [{'CC-Total-Octets', 1000000}], [{'CC-Total-Octets', 512000}])])),
    [Mscc2] = maps:get('Multiple-Services-Credit-Control', body(U)),
    out("CCA-U-LOW", [code(U) | grants(U)] ++ [fui, length(maps:get('Final-Unit-Indication', Mscc2, []))]),
    out("WAIT", [bar]),
    await_line(),
    receive {server_request, 'ASR', Sid, _} -> out("ASR", []) after 10000 -> error(no_asr) end.

%% Until this peer has had a DWA for a DWR of its own (OTP's watchdog sends it after Tw).
watchdog_answered() -> watchdog_answered(100).
watchdog_answered(0) -> error(no_dwa);
watchdog_answered(N) ->
    Stats = diameter:service_info(?SVC, statistics),
    Dwa = [C || {_Peer, Counters} <- Stats, {{{0, 280, 0}, recv, {'Result-Code', 2001}}, C} <- Counters],
    case lists:sum(Dwa) of
        0 -> timer:sleep(100), watchdog_answered(N - 1);
        Count -> out("DWA", [Count])
    end.

await_line() ->
    case io:get_line("") of
        eof -> error(stdin_closed);
        _ -> ok
    end.

ccr(Sid, Context, Type, Number, Msisdn, Extra, Msccs) ->
    ['CCR' | maps:from_list([
        {'Session-Id', Sid}, {'Origin-Host', ?HOST}, {'Origin-Realm', ?REALM},
        {'Destination-Realm', "localdomain"}, {'Auth-Application-Id', 4},
        {'Service-Context-Id', Context}, {'CC-Request-Type', Type}, {'CC-Request-Number', Number},
        {'Subscription-Id', [#{'Subscription-Id-Type' => ?E164, 'Subscription-Id-Data' => Msisdn}]},
        {'Multiple-Services-Indicator', 1},
        {'Multiple-Services-Credit-Control', Msccs} | Extra])].

mscc(RatingGroup, Requested, Used) ->
    M = #{'Rating-Group' => RatingGroup},
    M1 = case Requested of [] -> M; _ -> M#{'Requested-Service-Unit' => maps:from_list(Requested)} end,
    case Used of [] -> M1; _ -> M1#{'Used-Service-Unit' => [maps:from_list(Used)]} end.

call(Request) ->
    case diameter:call(?SVC, gy, Request, []) of
        {ok, Answer} -> Answer;
        Other -> error({call, Other})
    end.

body(['CCA' | Body]) -> Body.
code(Answer) -> maps:get('Result-Code', body(Answer)).

%% "RG=UNIT:VALUE" per MSCC, in the order answered.
grants(Answer) ->
    [lists:flatten(io_lib:format("~w=~s", [maps:get('Rating-Group', M, []), grant(M)]))
     || M <- maps:get('Multiple-Services-Credit-Control', body(Answer), [])].

grant(#{'Granted-Service-Unit' := [Gsu]}) ->
    string:join([lists:flatten(io_lib:format("~s:~p", [K, V])) || {K, [V]} <- maps:to_list(Gsu)], ",");
grant(#{'Result-Code' := [Code]}) -> lists:flatten(io_lib:format("result:~p", [Code]));
grant(_) -> "none".

msg(Pkt) -> element(4, Pkt).  % #diameter_packet.msg

out(Key, Values) ->
    io:format("~s~s~n", [Key, [[" ", v(V)] || V <- Values]]).

v(V) when is_integer(V) -> integer_to_list(V);
v(V) when is_atom(V) -> atom_to_list(V);
v(V) when is_binary(V) -> binary_to_list(V);
v(V) -> V.

%% -- diameter callbacks ---------------------------------------------------------------

peer_up(_Svc, _Peer, State) -> State.
peer_down(_Svc, _Peer, State) -> State.
pick_peer([Peer | _], _, _Svc, _State) -> {ok, Peer}.
prepare_request(Pkt, _Svc, _Peer) -> {send, Pkt}.
prepare_retransmit(Pkt, _Svc, _Peer) -> {send, Pkt}.

%% A decode error in an answer (an AVP OTP's strict decoder does not accept) fails the call.
handle_answer(Pkt, _Request, _Svc, _Peer) ->
    case element(6, Pkt) of  % #diameter_packet.errors
        [] -> {ok, msg(Pkt)};
        Errors -> {decode_errors, Errors}
    end.

handle_error(Reason, _Request, _Svc, _Peer) -> {error, Reason}.

handle_request(Pkt, _Svc, _Peer) ->
    [Name | Body] = msg(Pkt),
    [] = element(6, Pkt),
    Sid = maps:get('Session-Id', Body),
    gy_main ! {server_request, Name, Sid, maps:get('Re-Auth-Request-Type', Body, none)},
    Answer = case Name of 'RAR' -> 'RAA'; 'ASR' -> 'ASA' end,
    {reply, [Answer | #{'Session-Id' => Sid, 'Result-Code' => 2001,
                        'Origin-Host' => ?HOST, 'Origin-Realm' => ?REALM}]}.
