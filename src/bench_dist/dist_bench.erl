%% The Erlang side of `relive bench dist`: the same workload whichever side
%% runs relive. A server node registers a sink and an echo process; a
%% driver node sends to them across the distribution link.
%%
%% - send: N casts of Payload to {dist_bench_sink, Node}, then one call that
%%   returns how many arrived (messages between two processes keep their
%%   order, so the count covers every cast): messages per second.
%% - call: N sequential gen_server:call/3 to {dist_bench_echo, Node}, each
%%   answered with its request: mean and p99 round trip in µs.
-module(dist_bench).
-export([serve/0, drive/3]).

serve() ->
    register(dist_bench_sink, spawn(fun() -> sink(0) end)),
    register(dist_bench_echo, spawn(fun echo/0)),
    ok.

sink(N) ->
    receive
        {'$gen_call', {From, Tag}, <<"count">>} ->
            From ! {Tag, N},
            sink(0);
        _ ->
            sink(N + 1)
    end.

echo() ->
    receive
        {'$gen_call', {From, Tag}, Request} -> From ! {Tag, Request};
        _ -> ok
    end,
    echo().

%% Prints one JSON object and halts the node.
drive(Node, Sends, Calls) ->
    Payload = binary:copy(<<"0123456789abcdef">>, 2),
    true = net_kernel:connect_node(Node),
    Sink = {dist_bench_sink, Node},
    Echo = {dist_bench_echo, Node},
    0 = call(Sink, <<"count">>),
    %% Warm up both paths before timing.
    _ = [call(Echo, Payload) || _ <- lists:seq(1, 1000)],
    send_loop(Sink, 10000, Payload),
    10000 = call(Sink, <<"count">>),
    T0 = erlang:monotonic_time(nanosecond),
    send_loop(Sink, Sends, Payload),
    Sends = call(Sink, <<"count">>),
    T1 = erlang:monotonic_time(nanosecond),
    Rtts = [timed_call(Echo, Payload) || _ <- lists:seq(1, Calls)],
    Sorted = lists:sort(Rtts),
    Mean = lists:sum(Rtts) / Calls / 1000,
    P99 = lists:nth(max(1, ceil(Calls * 0.99)), Sorted) / 1000,
    MsgsPerSec = Sends * 1.0e9 / (T1 - T0),
    io:format("{\"msgs_per_sec\":~.1f,\"call_mean_us\":~.2f,\"call_p99_us\":~.2f}~n",
              [MsgsPerSec, Mean, P99]),
    halt(0).

send_loop(_, 0, _) -> ok;
send_loop(To, N, Payload) ->
    To ! Payload,
    send_loop(To, N - 1, Payload).

%% A gen_server call, as gen:call makes it to {Name, Node} (OTP 25): a
%% monitor on the name, the request, the reply, the monitor removed. The
%% relive driver (Distribution::call) puts the same frames on the wire:
%% MONITOR_P, REG_SEND, then DEMONITOR_P after the reply.
call(To, Request) ->
    try
        gen_server:call(To, Request, 60000)
    catch
        exit:Reason ->
            io:format(standard_error, "dist_bench: the call to ~p failed: ~p~n", [To, Reason]),
            halt(2)
    end.

timed_call(To, Request) ->
    T0 = erlang:monotonic_time(nanosecond),
    Request = call(To, Request),
    erlang:monotonic_time(nanosecond) - T0.
